//! Vision server of dvd: decodes and tiles images (InternVL dynamic high resolution), runs
//! InternViT, pixel shuffle, the MLP projector and the Visual Resolution Router, and streams the
//! BF16 features tile by tile to the language server named in each request through
//! [`dvd-transport`](../dvd_transport/index.html).
//!
//! This crate is the library behind `dvd vision serve`. The model and the server land with the
//! `[vision-model]` and `[vision-server]` issues; until then it holds nothing, and `dvd` offers no
//! vision subcommand.
