//! Giving freed heap memory back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas. After a burst (loading a large
//! index at start-up, a first sync of thousands of files) a daemon that then idles for
//! days would go on holding the burst's peak, several times what it uses (see
//! docs/benchmarks.md, "## Daemon"). So the daemon trims once a burst is over.

/// Returns free heap pages to the system (glibc only; elsewhere a no-op).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free
    // lists under its own locks; it may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the system (glibc only; elsewhere a no-op).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
