//! Benchmarks of dvd.
