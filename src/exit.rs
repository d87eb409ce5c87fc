//! Exit codes of `ferry` commands, one meaning each, so scripts and service managers can
//! tell the endings apart.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: the migration completed (or was already completed), or `ferry run` was stopped by SIGTERM/SIGINT to be resumed later; other commands: done (`ferry report`: a stored report was printed, whatever its ending) |
//! | 1 | the migration failed, or a command could not do its work (daemon unreachable, verification found a difference, no stored report) |
//! | 2 | the config file is missing or invalid |
//! | 3 | the migration was cancelled (also `ferry run` started again on a cancelled migration: it prints the stored report and does not resume) |
//! | 4 | the cutover window expired (also `ferry run` started again on an expired migration) |
//! | 5 | refused by validation: a pre-migration check failed |
//! | 6 | the destination is held by another running migration (its lease) |

use std::process::ExitCode;

use crate::progress::Phase;

pub const COMPLETED: u8 = 0;
pub const FAILED: u8 = 1;
pub const BAD_CONFIG: u8 = 2;
pub const CANCELLED: u8 = 3;
pub const EXPIRED: u8 = 4;
pub const REFUSED_BY_VALIDATION: u8 = 5;
pub const DESTINATION_HELD: u8 = 6;

/// The code of a run that ended in `phase`; a phase that is not an ending means the run
/// was stopped (by a signal) and can be resumed: success.
pub fn of_phase(phase: Phase) -> u8 {
    match phase {
        Phase::Failed => FAILED,
        Phase::Cancelled => CANCELLED,
        Phase::Expired => EXPIRED,
        _ => COMPLETED,
    }
}

pub fn code(value: u8) -> ExitCode {
    ExitCode::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_own_code() {
        let codes = [
            of_phase(Phase::Completed),
            of_phase(Phase::Failed),
            of_phase(Phase::Cancelled),
            of_phase(Phase::Expired),
            REFUSED_BY_VALIDATION,
            DESTINATION_HELD,
            BAD_CONFIG,
        ];
        let mut unique = codes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        assert_eq!(
            of_phase(Phase::Syncing),
            COMPLETED,
            "stopped to resume later"
        );
    }
}
