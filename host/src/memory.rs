//! Peak memory. glibc's malloc gives each thread that contends for it an arena of its own (up
//! to eight per core), keeps what a thread freed in that thread's arena, and returns memory to
//! the system only from the top of a heap. A push allocates its 1 MiB buffers on one thread and
//! frees them on another (the guest's thread, the export's pump, a layer's encoder and its
//! workers, new for each layer), so with the defaults about half of its peak RSS was memory
//! nothing used. `configure` caps the arenas, and `release` hands free pages back where a burst
//! of allocations has just ended (the guest's compilation, a layer's encoding).

/// Arenas malloc may create, whatever the cores: the allocations that matter are few and large
/// (1 MiB buffers), so threads seldom wait for an arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Caps malloc's arenas. Call first thing, before any thread starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only sets malloc's tunables; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns free heap pages to the system (glibc's `malloc_trim`); elsewhere nothing to do.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only walks malloc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
