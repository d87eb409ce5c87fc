//! Process-wide allocator tuning.
//!
//! Ferry and the sandbox move documents in batches of up to 16 MiB. With glibc's defaults
//! every such buffer is its own `mmap` (zeroed pages, one fault per page) and each thread
//! arena grows and shrinks its heap a few pages at a time (`mprotect`, `madvise`). A
//! profile of the migration benchmark put over a fifth of all CPU time in those kernel
//! paths. Keeping freed memory for reuse removes that churn; the price is that the
//! process keeps its high-water mark, which the batch and mailbox budgets bound.

/// Raises glibc's mmap and trim thresholds so large batch buffers are reused instead of
/// being mapped, zeroed and unmapped each time. A no-op on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: libc::c_int = 1024 * 1024;
        // SAFETY: mallopt only changes allocator parameters; called before any thread
        // is started.
        unsafe {
            // 32 MiB is the largest threshold glibc accepts on 64-bit targets.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 * MIB);
            libc::mallopt(libc::M_TOP_PAD, 64 * MIB);
        }
    }
}
