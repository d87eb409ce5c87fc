//! The final migration report: printed at completion and served as JSON by the API.

use serde::{Deserialize, Serialize};

/// One namespace whose two sides differ.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Mismatch {
    pub namespace: String,
    /// What differs: "count", "content", "indexes", "options", "missing".
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    pub passed: bool,
    pub namespaces_checked: u64,
    /// Documents read on both sides by this comparison.
    pub documents_checked: u64,
    /// Documents compared before the cutover by the baseline verification, in the
    /// namespaces checked from it.
    #[serde(default)]
    pub baseline_documents: u64,
    /// Namespaces checked from the baseline (only changed documents and differing
    /// chunks read again); the others were read in full.
    #[serde(default)]
    pub namespaces_rechecked: u64,
    pub mismatches: Vec<Mismatch>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// How the migration ended: `completed`, `cancelled`, `failed` or `expired`; or
    /// `cutover_refused` while a refused cutover's comparison is served (the run goes on).
    #[serde(default = "completed")]
    pub ending: String,
    /// Why it ended, when it did not complete (the failure, the cancel, the expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub events_synced: u64,
    /// From the operator's confirmation that writes stopped to `completed`.
    pub downtime_seconds: f64,
    pub duration_seconds: f64,
    pub documents_copied: u64,
    pub bytes_copied: u64,
    pub collections_copied: u64,
    pub views_copied: u64,
    pub indexes_copied: u64,
    pub verification: Verification,
    /// Writes that reached the source after the cutover confirmation.
    pub late_writes_detected: u64,
    /// What Ferry does not migrate, said plainly.
    pub skipped: Vec<String>,
    /// Balancers Ferry could not restore as they were before the migration (or found
    /// started by someone else mid-run), each with the commands to run.
    #[serde(default)]
    pub balancer_warnings: Vec<String>,
}

fn completed() -> String {
    "completed".into()
}

impl Report {
    /// Whether the migration this report describes completed (cut over and verified).
    pub fn completed(&self) -> bool {
        self.ending.is_empty() || self.ending == "completed"
    }
}

/// Bytes in binary units with one decimal (`1.5 GiB`), for reports and `ferry status`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.completed() {
            writeln!(f, "migration report")?;
        } else {
            match self.ending.as_str() {
                "cutover_refused" => writeln!(
                    f,
                    "migration report: the cutover was refused by verification; the migration syncs again and can be cut over once the difference is gone"
                )?,
                ending => writeln!(f, "migration report: the migration {ending}")?,
            }
            if let Some(reason) = &self.reason {
                writeln!(f, "  reason:              {reason}")?;
            }
        }
        writeln!(f, "  changes synced:      {}", self.events_synced)?;
        writeln!(f, "  downtime:            {:.2} s", self.downtime_seconds)?;
        writeln!(f, "  duration:            {:.1} s", self.duration_seconds)?;
        writeln!(
            f,
            "  data copied:         {} documents, {}",
            self.documents_copied,
            human_bytes(self.bytes_copied)
        )?;
        writeln!(
            f,
            "  collections copied:  {} ({} views, {} indexes)",
            self.collections_copied, self.views_copied, self.indexes_copied
        )?;
        let v = &self.verification;
        if !self.completed() {
            writeln!(
                f,
                "  verification:        not run (the destination is not a finished copy)"
            )?;
        } else if v.passed {
            if v.namespaces_rechecked > 0 {
                writeln!(
                    f,
                    "  verification:        passed ({} namespaces; {} documents compared before cutover, {} read again at cutover)",
                    v.namespaces_checked, v.baseline_documents, v.documents_checked
                )?;
            } else {
                writeln!(
                    f,
                    "  verification:        passed ({} namespaces, {} documents)",
                    v.namespaces_checked, v.documents_checked
                )?;
            }
        } else {
            writeln!(
                f,
                "  verification:        FAILED ({} mismatches)",
                v.mismatches.len()
            )?;
            for m in &v.mismatches {
                writeln!(f, "    {} [{}]: {}", m.namespace, m.kind, m.detail)?;
            }
        }
        if self.late_writes_detected > 0 {
            writeln!(
                f,
                "  late writes:         {} writes reached the source after cutover was confirmed",
                self.late_writes_detected
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "  not migrated:        {s}")?;
        }
        for w in &self.balancer_warnings {
            writeln!(f, "  balancer:            {w}")?;
        }
        Ok(())
    }
}
