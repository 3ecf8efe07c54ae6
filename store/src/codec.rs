//! A small length-prefixed binary encoding for log records and JetStream payloads.

use crate::{KvWrite, NewEvent};

/// Appends values to a byte buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub(crate) fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(b) => self.u8(1).bytes(b),
        }
    }
    pub(crate) fn event(&mut self, e: &NewEvent) -> &mut Self {
        self.str(&e.event_type)
            .u32(e.schema_version)
            .str(&e.content_type)
            .bytes(&e.payload)
            .str(&e.command_id)
            .str(&e.correlation_id)
            .str(&e.causation_id)
            .u64(e.time_ms)
    }
    pub(crate) fn events(&mut self, es: &[NewEvent]) -> &mut Self {
        self.u32(es.len() as u32);
        for e in es {
            self.event(e);
        }
        self
    }
    /// The events of one append, then their command's digest, once (every event of an append
    /// carries the same).
    pub(crate) fn events_with_digest(&mut self, es: &[NewEvent]) -> &mut Self {
        self.events(es).bytes(es.first().map_or(&[][..], |e| &e.command_digest))
    }
    pub(crate) fn kv_writes(&mut self, ws: &[KvWrite]) -> &mut Self {
        self.u32(ws.len() as u32);
        for w in ws {
            self.str(&w.bucket).str(&w.key).opt_bytes(w.value.as_deref());
        }
        self
    }
}

/// The input ended early or held an invalid value.
#[derive(Debug)]
pub(crate) struct DecodeError;

/// Reads values written by [`Enc`].
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError)?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError)?))
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError)
    }
    pub(crate) fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(DecodeError),
        }
    }
    pub(crate) fn event(&mut self) -> Result<NewEvent, DecodeError> {
        Ok(NewEvent {
            event_type: self.str()?,
            schema_version: self.u32()?,
            content_type: self.str()?,
            payload: self.bytes()?,
            command_id: self.str()?,
            command_digest: Vec::new(),
            correlation_id: self.str()?,
            causation_id: self.str()?,
            time_ms: self.u64()?,
        })
    }
    pub(crate) fn events(&mut self) -> Result<Vec<NewEvent>, DecodeError> {
        let n = self.u32()? as usize;
        // Each event takes at least 36 bytes: refuse counts the input cannot hold.
        if n > self.buf.len() / 36 + 1 {
            return Err(DecodeError);
        }
        (0..n).map(|_| self.event()).collect()
    }
    /// What [`Enc::events_with_digest`] wrote.
    pub(crate) fn events_with_digest(&mut self) -> Result<Vec<NewEvent>, DecodeError> {
        let mut events = self.events()?;
        let digest = self.bytes()?;
        for e in &mut events {
            e.command_digest.clone_from(&digest);
        }
        Ok(events)
    }
    pub(crate) fn kv_writes(&mut self) -> Result<Vec<KvWrite>, DecodeError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / 9 + 1 {
            return Err(DecodeError);
        }
        (0..n).map(|_| Ok(KvWrite { bucket: self.str()?, key: self.str()?, value: self.opt_bytes()? })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_truncation_is_an_error() {
        let e = NewEvent {
            event_type: "reserved".into(),
            schema_version: 3,
            content_type: "application/json".into(),
            payload: b"{\"units\":5}".to_vec(),
            command_id: "c1".into(),
            command_digest: vec![7; 32],
            correlation_id: "r1".into(),
            causation_id: "c1".into(),
            time_ms: 1_700_000_000_000,
        };
        // The first layout has no digest: it reads back without one.
        let mut enc = Enc::default();
        enc.events(&[e.clone(), e.clone()]);
        let back = Dec::new(&enc.buf).events().unwrap();
        let undigested = NewEvent { command_digest: Vec::new(), ..e.clone() };
        assert_eq!(back, vec![undigested.clone(), undigested]);
        for cut in 0..enc.buf.len() {
            assert!(Dec::new(&enc.buf[..cut]).events().is_err(), "cut at {cut}");
        }
        let mut enc = Enc::default();
        enc.events_with_digest(&[e.clone(), e.clone()]);
        let mut dec = Dec::new(&enc.buf);
        assert_eq!(dec.events_with_digest().unwrap(), vec![e.clone(), e]);
        assert!(dec.is_empty());
        for cut in 0..enc.buf.len() {
            assert!(Dec::new(&enc.buf[..cut]).events_with_digest().is_err(), "cut at {cut}");
        }
    }
}
