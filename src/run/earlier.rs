//! What `ferry run` does with the state an earlier run left on the destination: resume
//! it, leave a completed one alone, refuse to resume a cancelled or expired one, or
//! start over when the operator asked to (`clear_destination`).

use crate::checkpoint::RunState;
use crate::progress::Phase;

use super::RunError;

/// What `ferry run` does with the state an earlier run left on the destination.
#[derive(Debug)]
pub(super) enum Earlier {
    /// No earlier run, or an ended one the operator asked to start over
    /// (`clear_destination`): the run begins from scratch.
    StartFresh,
    /// A run stopped by a signal or a crash, or one that failed (its cause fixed, it
    /// goes on from its checkpoints).
    Resume(Box<RunState>),
    /// Completed: nothing to do and nothing to touch; its stored report.
    Completed(Option<Box<crate::report::Report>>),
}

/// Decides from the earlier run's state. A cancelled or expired run is over: it is not
/// resumed behind the operator's back, and starting over is a decision made on purpose
/// (`clear_destination`), so without it the run refuses with [`RunError::Ended`]. A
/// failure was not the operator's choice: the run resumes, unless `clear_destination`
/// asks to start over (a failure whose message says to start over, such as lost change
/// history or a resharded source collection).
pub(super) fn earlier_run(
    existing: Option<RunState>,
    clear_destination: bool,
) -> Result<Earlier, RunError> {
    let Some(state) = existing else {
        return Ok(Earlier::StartFresh);
    };
    match state.phase {
        Some(Phase::Completed) => Ok(Earlier::Completed(state.report.map(Box::new))),
        Some(phase @ (Phase::Cancelled | Phase::Expired | Phase::Failed)) if clear_destination => {
            tracing::warn!(
                phase = phase.as_str(),
                "the earlier migration on this destination ended; starting over (clear_destination)"
            );
            Ok(Earlier::StartFresh)
        }
        Some(phase @ (Phase::Cancelled | Phase::Expired)) => Err(RunError::Ended {
            phase,
            report: state.report.map(Box::new),
        }),
        Some(Phase::Failed) => {
            // The failure's stored report stays until this run ends; `ferry report`
            // shows it no more meanwhile.
            let reason = state
                .report
                .as_ref()
                .and_then(|r| r.reason.clone())
                .unwrap_or_else(|| "see the earlier log".into());
            tracing::warn!(
                %reason,
                "the earlier run on this destination failed; resuming it from its checkpoints (if its cause is not fixed, it fails again; to start over instead, set destination.clear_destination)"
            );
            Ok(Earlier::Resume(Box::new(state)))
        }
        _ => Ok(Earlier::Resume(Box::new(state))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;

    fn ended(phase: Phase) -> Option<RunState> {
        Some(RunState {
            phase: Some(phase),
            ..RunState::default()
        })
    }

    /// Every ending, with and without `clear_destination`: completed is left alone,
    /// cancelled and expired refuse (with their own exit codes) unless told to start
    /// over, failed resumes unless told to start over, and a stopped run resumes.
    #[test]
    fn each_earlier_ending_is_resumed_refused_or_started_over() {
        for clear in [false, true] {
            assert!(matches!(
                earlier_run(ended(Phase::Completed), clear),
                Ok(Earlier::Completed(_))
            ));
            assert!(matches!(
                earlier_run(ended(Phase::Syncing), clear),
                Ok(Earlier::Resume(_))
            ));
            assert!(matches!(earlier_run(None, clear), Ok(Earlier::StartFresh)));
        }
        for (phase, code) in [
            (Phase::Cancelled, exit::CANCELLED),
            (Phase::Expired, exit::EXPIRED),
        ] {
            match earlier_run(ended(phase), false) {
                Err(e) => assert_eq!(e.exit_code(), code, "{e}"),
                other => panic!("{phase:?} was not refused: {other:?}"),
            }
            assert!(matches!(
                earlier_run(ended(phase), true),
                Ok(Earlier::StartFresh)
            ));
        }
        assert!(matches!(
            earlier_run(ended(Phase::Failed), false),
            Ok(Earlier::Resume(_))
        ));
        assert!(matches!(
            earlier_run(ended(Phase::Failed), true),
            Ok(Earlier::StartFresh)
        ));
    }
}
