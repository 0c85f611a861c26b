//! AArch64 kernels. NEON is part of the AArch64 baseline, so `neon` needs no run-time check
//! beyond the one `Backend::is_available` makes.

pub mod neon;
