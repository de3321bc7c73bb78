//! Checks an Arrow IPC schema flatbuffer before arrow-rs converts it: arrow-ipc
//! unwraps (panics on) type tables it does not expect — an unknown time unit, a union
//! without its children, a nested column without its child. Used on schemas that
//! arrive from clients (`strata-ingest`'s IPC guard) and on the schema a segment embeds
//! (`ARROW:schema`, checked before parquet decodes it).
//!
//! Accepts the types Strata stores: primitives, strings and binaries (views too),
//! temporal types, decimals (little-endian), lists, maps and structs; refuses
//! dictionaries and unions. The error is a message for the client or the log.

/// Checks every field of `schema` (see the module docs).
pub fn check(schema: &arrow::ipc::Schema<'_>) -> Result<(), String> {
    let Some(fields) = schema.fields() else {
        return Err("a schema without fields".into());
    };
    let big_endian = schema.endianness() != arrow::ipc::Endianness::Little;
    for field in fields {
        check_field(&field, big_endian)?;
    }
    Ok(())
}

fn check_field(field: &arrow::ipc::Field<'_>, big_endian: bool) -> Result<(), String> {
    use arrow::ipc::{DateUnit, IntervalUnit, Precision, TimeUnit, Type};
    if field.dictionary().is_some() {
        return Err("dictionary-encoded columns are not accepted: send plain arrays".into());
    }
    let bad = |what: &str| Err(format!("a column of a malformed {what} type"));
    let one_child = |field: &arrow::ipc::Field<'_>| -> Result<(), String> {
        match field.children() {
            Some(c) if c.len() == 1 => check_field(&c.get(0), big_endian),
            _ => Err("a nested column without its one child".into()),
        }
    };
    let time_units = [
        TimeUnit::SECOND,
        TimeUnit::MILLISECOND,
        TimeUnit::MICROSECOND,
        TimeUnit::NANOSECOND,
    ];
    match field.type_type() {
        Type::Null
        | Type::Bool
        | Type::Utf8
        | Type::Binary
        | Type::LargeUtf8
        | Type::LargeBinary
        | Type::Utf8View
        | Type::BinaryView => Ok(()),
        Type::Int => match field.type_as_int() {
            Some(i) if matches!(i.bitWidth(), 8 | 16 | 32 | 64) => Ok(()),
            _ => bad("integer"),
        },
        Type::FloatingPoint => match field.type_as_floating_point() {
            Some(f)
                if [Precision::HALF, Precision::SINGLE, Precision::DOUBLE]
                    .contains(&f.precision()) =>
            {
                Ok(())
            }
            _ => bad("floating point"),
        },
        Type::Date => match field.type_as_date() {
            Some(d) if [DateUnit::DAY, DateUnit::MILLISECOND].contains(&d.unit()) => Ok(()),
            _ => bad("date"),
        },
        Type::Time => match field.type_as_time() {
            Some(t)
                if matches!(
                    (t.bitWidth(), t.unit()),
                    (32, TimeUnit::SECOND)
                        | (32, TimeUnit::MILLISECOND)
                        | (64, TimeUnit::MICROSECOND)
                        | (64, TimeUnit::NANOSECOND)
                ) =>
            {
                Ok(())
            }
            _ => bad("time"),
        },
        Type::Timestamp => match field.type_as_timestamp() {
            Some(t) if time_units.contains(&t.unit()) => Ok(()),
            _ => bad("timestamp"),
        },
        Type::Duration => match field.type_as_duration() {
            Some(d) if time_units.contains(&d.unit()) => Ok(()),
            _ => bad("duration"),
        },
        Type::Interval => match field.type_as_interval() {
            Some(i)
                if [
                    IntervalUnit::YEAR_MONTH,
                    IntervalUnit::DAY_TIME,
                    IntervalUnit::MONTH_DAY_NANO,
                ]
                .contains(&i.unit()) =>
            {
                Ok(())
            }
            _ => bad("interval"),
        },
        Type::FixedSizeBinary => match field.type_as_fixed_size_binary() {
            Some(f) if f.byteWidth() >= 0 => Ok(()),
            _ => bad("fixed size binary"),
        },
        Type::Decimal => match field.type_as_decimal() {
            Some(d)
                if !big_endian
                    && u8::try_from(d.precision()).is_ok()
                    && i8::try_from(d.scale()).is_ok()
                    && matches!(d.bitWidth(), 32 | 64 | 128 | 256) =>
            {
                Ok(())
            }
            _ => bad("decimal"),
        },
        Type::List | Type::LargeList | Type::ListView | Type::LargeListView => one_child(field),
        Type::FixedSizeList => match field.type_as_fixed_size_list() {
            Some(f) if f.listSize() >= 0 => one_child(field),
            _ => bad("fixed size list"),
        },
        Type::Map => match field.type_as_map() {
            Some(_) => one_child(field),
            None => bad("map"),
        },
        Type::Struct_ => {
            let Some(children) = field.children() else {
                return bad("struct");
            };
            for c in children {
                check_field(&c, big_endian)?;
            }
            Ok(())
        }
        other => Err(format!("columns of type {other:?} are not accepted")),
    }
}
