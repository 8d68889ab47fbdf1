//! The SlicerNNInteractive extension's endpoints (`nninteractive-slicer-server` 0.3.2).

use super::AppState;
use axum::Router;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
