//! Spool: an append-only file of change events on the migration host, so the source's
//! change stream can be read while the initial copy runs (when the source's oplog may
//! not hold the whole copy's worth of history) and applied once the copy is done.
//!
//! Each record is bincode-framed: `{checksum: u64, event: bytes}` where `event` is the
//! raw BSON of one change event (its `_id` is its resume token) and `checksum` is the
//! xxh3-64 of those bytes. The writer syncs the file to disk before the tailer records
//! the spool's length and stream position in the checkpoint, so after a crash the
//! recorded prefix is intact; anything past it is cut off and read again from the source.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bson::{RawDocument, RawDocumentBuf};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path}: record at byte {offset} is damaged ({why}); delete the file to read these changes from the source again")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
}

/// Event bytes, framed by bincode as one length-prefixed byte string.
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    checksum: u64,
    event: Bytes,
}

/// Largest event record accepted when reading (a change event is at most 16 MiB).
const MAX_RECORD: u64 = 64 * 1024 * 1024;

fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Appends events; [`SpoolWriter::sync`] makes them durable and returns the length to
/// record in the checkpoint.
pub struct SpoolWriter {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl SpoolWriter {
    /// Opens `path`, keeping its first `keep` bytes (the durable prefix recorded in the
    /// checkpoint) and dropping anything after them. Creates the file and its directory
    /// when missing.
    pub fn open(path: &Path, keep: u64) -> Result<SpoolWriter, SpoolError> {
        let io = |action| {
            move |source| SpoolError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create directory"))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let keep = keep.min(len);
        file.set_len(keep).map_err(io("truncate"))?;
        file.seek(SeekFrom::Start(keep)).map_err(io("seek"))?;
        Ok(SpoolWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            len: keep,
        })
    }

    pub fn append(&mut self, event: &RawDocument) -> Result<(), SpoolError> {
        let bytes = event.as_bytes();
        let record = Record {
            checksum: checksum(bytes),
            event: Bytes(bytes.to_vec()),
        };
        let size = bincode::serialized_size(&record).map_err(|e| self.corrupt(e))?;
        bincode::serialize_into(&mut self.out, &record).map_err(|e| self.corrupt(e))?;
        self.len += size;
        Ok(())
    }

    fn corrupt(&self, e: bincode::Error) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path.clone(),
            offset: self.len,
            why: e.to_string(),
        }
    }

    /// Flushes and syncs the file; returns its length, all of it durable.
    pub fn sync(&mut self) -> Result<u64, SpoolError> {
        let io = |source| SpoolError::Io {
            path: self.path.clone(),
            action: "sync",
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_data().map_err(io)?;
        Ok(self.len)
    }

    /// Bytes written so far (synced or not).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads the events of the first `len` bytes of a spool file, in order.
pub struct SpoolReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    end: u64,
}

impl SpoolReader {
    pub fn open(path: &Path, len: u64) -> Result<SpoolReader, SpoolError> {
        let file = File::open(path).map_err(|source| SpoolError::Io {
            path: path.to_path_buf(),
            action: "open",
            source,
        })?;
        Ok(SpoolReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            end: len,
        })
    }

    /// The next event, or None at the end of the recorded length.
    pub fn next_event(&mut self) -> Result<Option<RawDocumentBuf>, SpoolError> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let corrupt = |offset, why: String| SpoolError::Corrupt {
            path: self.path.clone(),
            offset,
            why,
        };
        let left = self.end - self.offset;
        let options = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(left.min(MAX_RECORD));
        use bincode::Options;
        let record: Record = options
            .deserialize_from(&mut (&mut self.input).take(left))
            .map_err(|e| corrupt(self.offset, e.to_string()))?;
        let size =
            bincode::serialized_size(&record).map_err(|e| corrupt(self.offset, e.to_string()))?;
        if checksum(&record.event.0) != record.checksum {
            return Err(corrupt(self.offset, "checksum mismatch".into()));
        }
        let event = RawDocumentBuf::from_bytes(record.event.0)
            .map_err(|e| corrupt(self.offset, e.to_string()))?;
        self.offset += size;
        Ok(Some(event))
    }
}

/// Removes a spool file that is no longer needed; a missing file is fine.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the spool file; delete it by hand")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("ferry-spool-test-{}", std::process::id()))
            .join(name)
    }

    fn event(i: i32) -> RawDocumentBuf {
        rawdoc! {"_id": {"_data": format!("82{i:08X}")}, "operationType": "insert", "n": i, "pad": "x".repeat(i as usize * 10)}
    }

    #[test]
    fn events_come_back_in_order_up_to_the_synced_length() {
        let path = temp_path("order.spool");
        let mut w = SpoolWriter::open(&path, 0).unwrap();
        for i in 0..100 {
            w.append(&event(i)).unwrap();
        }
        let len = w.sync().unwrap();
        w.append(&event(100)).unwrap();
        drop(w);
        let mut r = SpoolReader::open(&path, len).unwrap();
        for i in 0..100 {
            assert_eq!(r.next_event().unwrap(), Some(event(i)));
        }
        assert_eq!(
            r.next_event().unwrap(),
            None,
            "the unsynced tail is not read"
        );
        remove(&path);
    }

    #[test]
    fn reopening_cuts_what_the_checkpoint_did_not_record_and_appends_after_it() {
        let path = temp_path("reopen.spool");
        let mut w = SpoolWriter::open(&path, 0).unwrap();
        w.append(&event(1)).unwrap();
        let kept = w.sync().unwrap();
        w.append(&event(2)).unwrap();
        w.sync().unwrap();
        drop(w);
        let mut w = SpoolWriter::open(&path, kept).unwrap();
        assert_eq!(w.len(), kept);
        w.append(&event(3)).unwrap();
        let len = w.sync().unwrap();
        let mut r = SpoolReader::open(&path, len).unwrap();
        assert_eq!(r.next_event().unwrap(), Some(event(1)));
        assert_eq!(r.next_event().unwrap(), Some(event(3)));
        assert_eq!(r.next_event().unwrap(), None);
        remove(&path);
    }

    #[test]
    fn a_damaged_record_is_reported_with_its_offset() {
        let path = temp_path("damaged.spool");
        let mut w = SpoolWriter::open(&path, 0).unwrap();
        w.append(&event(1)).unwrap();
        w.append(&event(2)).unwrap();
        let len = w.sync().unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let mut r = SpoolReader::open(&path, len).unwrap();
        assert_eq!(r.next_event().unwrap(), Some(event(1)));
        match r.next_event() {
            Err(SpoolError::Corrupt { offset, .. }) => assert!(offset > 0),
            other => panic!("expected a damaged record, got {other:?}"),
        }
        remove(&path);
    }
}
