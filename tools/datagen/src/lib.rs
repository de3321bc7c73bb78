//! Deterministic generators: a KillrWeather-like weather feed.
//!
//! The weather dataset is `schemas/weather.json` (the shape of KillrWeather's
//! `raw_data` table): per station, one observation per interval.

use std::sync::Arc;

use arrow::array::{
    Float64Builder, Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_types::DatasetSpec;

/// The weather dataset spec, from `schemas/weather.json`.
pub fn weather_spec() -> DatasetSpec {
    DatasetSpec::from_json(include_str!("../../../schemas/weather.json"))
        .expect("schemas/weather.json is valid")
}

/// Parameters of a generated weather feed.
#[derive(Clone, Debug)]
pub struct WeatherFeed {
    pub stations: usize,
    /// First observation time, microseconds since the epoch.
    pub start_us: i64,
    /// Time between two observations of one station.
    pub interval_us: i64,
    pub seed: u64,
}

impl Default for WeatherFeed {
    fn default() -> Self {
        Self {
            stations: 100,
            // 2026-01-01T00:00:00Z
            start_us: 1_767_225_600_000_000,
            interval_us: 60_000_000,
            seed: 42,
        }
    }
}

const SKY: [&str; 6] = ["CLR", "FEW", "SCT", "BKN", "OVC", "VV"];

/// The name of station `i` (WMO-like: `725030:14732`).
pub fn station_name(i: usize) -> String {
    format!("{:06}:{:05}", 700_000 + i * 37, 10_000 + i * 13)
}

impl WeatherFeed {
    /// Rows `first..first+count` of the feed, in time order, all stations per tick:
    /// row n is station `n % stations` at tick `n / stations`. The same row number
    /// always gives the same row.
    pub fn batch(&self, first: u64, count: usize) -> RecordBatch {
        let spec = weather_spec();
        let mut station = StringBuilder::with_capacity(count, count * 12);
        let mut ts = TimestampMicrosecondBuilder::with_capacity(count).with_timezone("UTC");
        let mut temperature = Float64Builder::with_capacity(count);
        let mut dewpoint = Float64Builder::with_capacity(count);
        let mut pressure = Float64Builder::with_capacity(count);
        let mut wind_dir = Int32Builder::with_capacity(count);
        let mut wind_speed = Float64Builder::with_capacity(count);
        let mut precip = Float64Builder::with_capacity(count);
        let mut sky = StringBuilder::with_capacity(count, count * 3);
        let names: Vec<String> = (0..self.stations).map(station_name).collect();
        for n in first..first + count as u64 {
            let s = (n % self.stations as u64) as usize;
            let tick = (n / self.stations as u64) as i64;
            let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let t_us = self.start_us + tick * self.interval_us;
            // A daily cycle around a per-station mean, plus noise.
            let day_frac = (t_us / 1_000_000 % 86_400) as f64 / 86_400.0;
            let base = 5.0 + (s % 30) as f64 + 8.0 * (day_frac * std::f64::consts::TAU).sin();
            let temp = ((base + rng.random_range(-2.0..2.0f64)) * 10.0).round() / 10.0;
            station.append_value(&names[s]);
            ts.append_value(t_us);
            temperature.append_value(temp);
            dewpoint.append_value(((temp - rng.random_range(0.0..8.0f64)) * 10.0).round() / 10.0);
            if rng.random_bool(0.02) {
                pressure.append_null();
            } else {
                pressure.append_value(
                    ((1013.0 + rng.random_range(-25.0..25.0f64)) * 10.0).round() / 10.0,
                );
            }
            wind_dir.append_value(rng.random_range(0..360));
            wind_speed.append_value((rng.random_range(0.0..20.0f64) * 10.0).round() / 10.0);
            precip.append_value(if rng.random_bool(0.1) {
                (rng.random_range(0.0..12.0f64) * 10.0).round() / 10.0
            } else {
                0.0
            });
            sky.append_value(SKY[rng.random_range(0..SKY.len())]);
        }
        RecordBatch::try_new(
            spec.schema.clone(),
            vec![
                Arc::new(station.finish()),
                Arc::new(ts.finish()),
                Arc::new(temperature.finish()),
                Arc::new(dewpoint.finish()),
                Arc::new(pressure.finish()),
                Arc::new(wind_dir.finish()),
                Arc::new(wind_speed.finish()),
                Arc::new(precip.finish()),
                Arc::new(sky.finish()),
            ],
        )
        .expect("generated columns match the weather schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_schema_shaped() {
        let feed = WeatherFeed::default();
        let a = feed.batch(1000, 500);
        let b = feed.batch(1000, 500);
        assert_eq!(a, b);
        assert_eq!(a.schema(), weather_spec().schema);
        assert_eq!(a.num_rows(), 500);
        let c = feed.batch(1200, 10);
        assert_eq!(c, a.slice(200, 10));
    }
}
