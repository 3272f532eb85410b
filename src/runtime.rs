//! Process-level tuning that training depends on.

/// Keep large freed blocks in the allocator instead of returning them to the OS.
///
/// glibc hands blocks above its mmap threshold straight back to the kernel, so every
/// activation-sized tensor of every training step page-faults afresh: measured at 12-35 % of
/// CPU time in a training step. Raising the thresholds makes later steps reuse the memory.
/// Idempotent and cheap; called when a network is created.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; any value is accepted or ignored.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The device a name asks for: `cpu`, `cuda` / `cuda:N` (a GPU; needs the `cuda` feature),
/// or `auto` (the first GPU when there is one, else the CPU).
///
/// ```
/// use transferlab::runtime::parse_device;
/// assert!(parse_device("cpu").unwrap().is_cpu());
/// assert!(parse_device("auto").is_ok());
/// assert!(parse_device("tpu").is_err());
/// ```
pub fn parse_device(name: &str) -> crate::Result<candle_core::Device> {
    use candle_core::Device;
    let hint = "build with `--features cuda` on a machine with an NVIDIA driver, or use --device cpu";
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => Some(0),
                Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()),
                None => None,
            };
            let Some(ordinal) = ordinal else {
                return Err(crate::Error::invalid("device", format!("{other:?}; use cpu, cuda, cuda:N or auto")));
            };
            Device::new_cuda(ordinal).map_err(|e| crate::Error::invalid("device", format!("{other}: {e}; {hint}")))
        }
    }
}
