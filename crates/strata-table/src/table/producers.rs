//! Producer claims: which server may accept a producer's batches for a dataset, when
//! several servers share one store.
//!
//! A producer's exactly-once marks are high-water marks committed with its rows. Two
//! servers each holding unflushed batches of one producer could commit them out of
//! order (a later batch first, then the earlier one skipped as a "duplicate": lost) or
//! both (applied twice). So a server accepts a producer's batches only while it holds
//! the producer's claim, a record written with `put_if_absent` (one winner), and gives
//! it up when another server asks for the producer (a request record), once every
//! batch it accepted from that producer is committed and no stream of it is open
//! there. The asking server answers [`Error::ProducerClaimed`] meanwhile: the client
//! retries, and gets through once the holder has flushed and released. A producer that
//! reconnects to the server holding it needs no store access at all (so ingestion into
//! the WAL goes on while the store is unreachable).

use super::*;

/// Who holds a producer's claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerClaim {
    owner: String,
    since_ms: i64,
}

impl Table {
    /// Claims `producer` for `owner` (a server id): `Ok` if it is now, or already was,
    /// `owner`'s; [`Error::ProducerClaimed`] naming the holder otherwise.
    pub async fn claim_producer(&self, producer: &str, owner: &str) -> Result<()> {
        let key = layout::producer_claim_key(&self.inner.id, producer);
        let claim = ProducerClaim {
            owner: owner.to_string(),
            since_ms: now_ms(),
        };
        let body = serde_json::to_vec(&claim).expect("claims serialize");
        match self.inner.meta.put_if_absent(&key, Bytes::from(body)).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_conflict() => match self.producer_owner(producer).await? {
                Some(holder) if holder == owner => Ok(()),
                // Released between the two calls: try again once more.
                None => Box::pin(self.claim_producer(producer, owner)).await,
                Some(holder) => Err(Error::ProducerClaimed {
                    dataset: self.name().to_string(),
                    producer: producer.to_string(),
                    owner: holder,
                }),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Gives `producer`'s claim up if `owner` holds it, and clears requests for it.
    pub async fn release_producer(&self, producer: &str, owner: &str) -> Result<()> {
        if self.producer_owner(producer).await?.as_deref() == Some(owner) {
            self.inner
                .meta
                .delete(&layout::producer_claim_key(&self.inner.id, producer))
                .await?;
        }
        self.inner
            .meta
            .delete(&layout::producer_request_key(&self.inner.id, producer))
            .await?;
        Ok(())
    }

    /// Asks the holder of `producer`'s claim to give it up once it can.
    pub async fn request_producer(&self, producer: &str, requester: &str) -> Result<()> {
        let claim = ProducerClaim {
            owner: requester.to_string(),
            since_ms: now_ms(),
        };
        let body = serde_json::to_vec(&claim).expect("claims serialize");
        let key = layout::producer_request_key(&self.inner.id, producer);
        match self.inner.meta.put_if_absent(&key, Bytes::from(body)).await {
            Err(e) if !e.is_conflict() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Producers another server asked for.
    pub async fn requested_producers(&self) -> Result<Vec<String>> {
        let id = &self.inner.id;
        Ok(self
            .inner
            .meta
            .list(&layout::producer_requests_prefix(id))
            .await?
            .iter()
            .filter_map(|k| layout::producer_of_request(id, k))
            .collect())
    }

    /// The server holding `producer`'s claim, if any.
    pub async fn producer_owner(&self, producer: &str) -> Result<Option<String>> {
        let key = layout::producer_claim_key(&self.inner.id, producer);
        match self.inner.meta.get(&key).await? {
            Some(bytes) => {
                let claim: ProducerClaim =
                    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
                Ok(Some(claim.owner))
            }
            None => Ok(None),
        }
    }

    /// The producers `owner` holds claims on.
    pub async fn claimed_producers(&self, owner: &str) -> Result<Vec<String>> {
        let prefix = layout::producer_claims_prefix(&self.inner.id);
        let mut out = Vec::new();
        for key in self.inner.meta.list(&prefix).await? {
            if let Some(producer) = layout::producer_of_claim(&self.inner.id, &key)
                && self.producer_owner(&producer).await?.as_deref() == Some(owner)
            {
                out.push(producer);
            }
        }
        Ok(out)
    }
}
