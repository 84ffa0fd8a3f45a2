//! Giving freed heap memory back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas. After a burst (loading a large
//! index at start-up, a first sync of thousands of files) a daemon that then idles for
//! days would go on holding the burst's peak, several times what it uses (see
//! docs/benchmarks.md, "## Daemon"). So the daemon trims once a burst is over.
//!
//! glibc also gives each thread that allocates an arena of its own (up to eight a core),
//! and what a trim leaves in them adds up: the engine's threads, making and checking
//! documents, kept a new peer of 10,000 files at 70 MiB idle against 50 MiB with one
//! arena. So the daemon allows two.

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

/// How many arenas glibc's allocator may make (see the module's notes).
const ARENAS: i32 = 2;

/// Caps the allocator's arenas at [`ARENAS`], before the daemon starts its threads
/// (glibc only; elsewhere a no-op).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    // SAFETY: mallopt takes two integers and only sets the allocator's own parameters
    // under its lock. A refusal (it returns 0) leaves glibc's default, which is safe.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Caps the allocator's arenas (glibc only; elsewhere a no-op).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}
