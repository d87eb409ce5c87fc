//! Change events larger than 16 MB, read whole.
//!
//! An event can exceed the 16 MB BSON limit although every document is within it (an
//! insert of a document near the limit, plus the event's own fields; an update with both
//! its changed fields and the looked-up document). Without help the server fails the
//! stream with 10334 BSONObjectTooLarge, for good: every resume meets the same event.
//! With `$changeStreamSplitLargeEvent` as the pipeline's last stage (MongoDB 7.0 and
//! 6.0.9+), it sends such an event as fragments, each carrying `splitEvent: {fragment,
//! of}` and its own resume token, the event's top-level fields spread over them in order.
//!
//! [`next_whole_event`] joins the fragments into the one event they came from before the
//! tailer sees it, so nothing downstream knows about splitting. It keeps reading until
//! the last fragment has arrived, so the stream's resume token is never left in the middle
//! of an event when the tailer cuts a batch and checkpoints: a restart resumes after a
//! whole event, never between its fragments.

use crate::cluster::streams::ChangeStream;
use crate::cluster::ClusterError;
use bson::raw::{RawBsonRef, RawDocument};
use bson::RawDocumentBuf;

/// The stage that makes the server split large events.
pub fn split_stage() -> bson::Document {
    bson::doc! {"$changeStreamSplitLargeEvent": {}}
}

/// Whether the source can split large events: 7.0+, or 6.0.9+.
pub fn supported(version: (u32, u32, u32)) -> bool {
    match version {
        (6, 0, patch) => patch >= 9,
        (major, _, _) => major >= 7,
    }
}

/// `splitEvent` of a fragment: (fragment, of).
fn fragment_of(event: &RawDocument) -> Option<(i64, i64)> {
    let Ok(Some(RawBsonRef::Document(split))) = event.get("splitEvent") else {
        return None;
    };
    let number = |name| match split.get(name) {
        Ok(Some(RawBsonRef::Int32(n))) => Some(i64::from(n)),
        Ok(Some(RawBsonRef::Int64(n))) => Some(n),
        _ => None,
    };
    Some((number("fragment")?, number("of")?))
}

/// An event being joined from its fragments.
#[derive(Default)]
pub struct Joining {
    fields: Option<RawDocumentBuf>,
    expected: i64,
    seen: i64,
}

/// Why fragments could not be joined.
#[derive(Debug, thiserror::Error)]
#[error("a split change event arrived out of order: {0}")]
pub struct SplitError(String);

impl Joining {
    /// Adds one event or fragment; returns the whole event once it is complete.
    pub fn push(&mut self, event: RawDocumentBuf) -> Result<Option<RawDocumentBuf>, SplitError> {
        let Some((fragment, of)) = fragment_of(&event) else {
            if self.fields.is_some() {
                return Err(SplitError(format!(
                    "an unsplit event came after fragment {} of {}",
                    self.seen, self.expected
                )));
            }
            return Ok(Some(event));
        };
        if fragment != self.seen + 1 || (self.fields.is_some() && of != self.expected) {
            return Err(SplitError(format!(
                "fragment {fragment} of {of} after fragment {} of {}",
                self.seen, self.expected
            )));
        }
        let fields = self.fields.get_or_insert_with(RawDocumentBuf::new);
        self.expected = of;
        self.seen = fragment;
        let last = fragment == of;
        for (name, value) in event.iter().flatten() {
            match name {
                "splitEvent" => {}
                // Every fragment has its own token; the event's is the last one's, which
                // is where the stream resumes after it.
                "_id" if !last => {}
                _ => fields.append_ref(name, value),
            }
        }
        if !last {
            return Ok(None);
        }
        self.expected = 0;
        self.seen = 0;
        Ok(self.fields.take())
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_none()
    }
}

/// The next whole event of the stream, if the current batch has one: fragments are read
/// until the event is complete, across getMores.
pub async fn next_whole(
    stream: &mut ChangeStream,
    joining: &mut Joining,
) -> Result<Option<RawDocumentBuf>, NextError> {
    loop {
        match stream.next_if_any().await.map_err(NextError::Stream)? {
            Some(event) => {
                if let Some(whole) = joining.push(event).map_err(NextError::Split)? {
                    return Ok(Some(whole));
                }
            }
            None if joining.is_empty() => return Ok(None),
            // The rest of the event is in the next batch.
            None => {}
        }
    }
}

/// Reading the next event failed.
#[derive(Debug)]
pub enum NextError {
    Stream(ClusterError),
    Split(SplitError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, rawdoc};

    #[test]
    fn fragments_join_into_the_event_with_the_last_token() {
        let mut j = Joining::default();
        let whole = rawdoc! {"_id": {"_data": "01"}, "operationType": "insert"};
        assert_eq!(j.push(whole.clone()).unwrap(), Some(whole));
        let first = rawdoc! {"_id": {"_data": "02"}, "splitEvent": {"fragment": 1, "of": 2}, "operationType": "insert", "fullDocument": {"_id": 1}};
        let second = rawdoc! {"_id": {"_data": "03"}, "splitEvent": {"fragment": 2, "of": 2}, "documentKey": {"_id": 1}};
        assert_eq!(j.push(first).unwrap(), None);
        let joined = j.push(second).unwrap().expect("whole event");
        assert_eq!(
            bson::Document::try_from(joined.as_ref()).unwrap(),
            doc! {"operationType": "insert", "fullDocument": {"_id": 1}, "_id": {"_data": "03"}, "documentKey": {"_id": 1}}
        );
        assert!(j.is_empty());
    }

    #[test]
    fn a_missing_fragment_is_an_error_not_a_partial_event() {
        let mut j = Joining::default();
        let second = rawdoc! {"_id": {"_data": "03"}, "splitEvent": {"fragment": 2, "of": 2}};
        assert!(j.push(second).is_err());
        assert!(supported((7, 0, 13)) && supported((6, 0, 17)) && !supported((6, 0, 8)));
    }
}
