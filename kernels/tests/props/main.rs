//! The kernels' integration tests, one module per file, built as a single test binary (`props`)
//! so that the library is linked once. Run one file's tests with a filter:
//! `cargo test --release -p medsam-kernels --test props gemm_props::`.
//!
//! proptest keeps the seeds of past failures in `kernels/tests/proptest-regressions/<file>.txt`
//! (its default place for a source file beside a `main.rs`) and replays them before new cases.

mod activation_props;
mod adamw_props;
mod ascend_tiled_props;
mod attention_bf16_props;
mod attention_props;
mod conv_props;
mod depthwise_props;
mod gemm_props;
mod int8_props;
mod mbconv_props;
mod norm_props;
mod pool_props;
mod rel_pos_props;
mod resize_props;
mod rope_props;
mod strided_props;
mod torch_parity;
mod window_props;
