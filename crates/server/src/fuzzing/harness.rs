//! The HTTP fuzz entry points' shared setup: a store on simulated storage
//! with small limits, behind the real router's state, and a runtime to
//! drive requests on, made once per process.

use crate::auth::AuthToken;
use crate::http::AppState;
use keel::{Db, Options};
use keel_storage::SimStorage;
use std::sync::Arc;

/// A runtime and the router's state over a fresh simulated store.
pub(crate) struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub state: AppState,
}

impl Harness {
    /// A harness whose server requires `token`, if given.
    pub(crate) fn new(token: Option<&str>) -> Harness {
        let s = SimStorage::new(1);
        keel_storage::create_dir_durable(&s, std::path::Path::new("/fuzz")).expect("sim dir");
        let opts = {
            let mut o = Options::default();
            o.max_key_len = 256;
            o.max_value_len = 4096;
            o.max_batch_bytes = 1 << 16;
            o.segment_size = 1 << 16;
            o
        };
        let (db, _) = Db::builder("/fuzz")
            .options(crate::refusal::server_options(opts))
            .storage(Arc::new(s))
            .open()
            .expect("open");
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            state: AppState {
                db: Arc::new(db),
                metrics,
                auth: token.map(|t| Arc::new(AuthToken::new(t).expect("token"))),
                cluster: None,
            },
        }
    }
}
