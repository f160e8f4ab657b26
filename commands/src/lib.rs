//! The write side of Strata: aggregates (`decide`/`evolve`), the command
//! handler (load, decide, append with the loaded version, retry on conflict,
//! idempotent command ids) and the reference domain (orders, inventory,
//! payments, shipping).
//!
//! Empty on purpose until issue 4 lands: this crate exists now so the
//! workspace has its final shape. It exports nothing yet, so nothing can
//! mistake it for a working command side.
