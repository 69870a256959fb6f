//! Reloading the links file (SIGHUP, `POST /admin/reload`): built off the request
//! path, swapped in whole. A failed reload keeps the map in service and says why:
//! in the log, in `clickedge_links_reloads_total{result="error"}`, and to the
//! caller.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use super::AppState;
use crate::links::{LineError, LinksSource, LoadError};

#[derive(Debug)]
pub struct ReloadReport {
    pub records: usize,
    pub invalid: Vec<LineError>,
}

#[derive(Debug)]
pub struct ReloadError(pub LoadError);

/// Loads the links file (and the GeoIP database, with `--geoip-db`) again and
/// swaps it in. Blocking: call it off the runtime.
pub fn reload_links(state: &AppState) -> Result<ReloadReport, ReloadError> {
    // One reload at a time; requests never take this lock.
    let _reloading = state.control.reload_lock.lock().expect("reload lock");
    if let Some(path) = &state.control.geoip_path {
        reload_geoip(state, path);
    }
    let loaded = crate::background::run_at_low_priority("links-reload", || {
        state.control.links_source.load(state.control.strict)
    });
    match loaded {
        Ok(loaded) => {
            log_skipped(&state.control.links_source, &loaded.invalid);
            let map = state.links.replace_file(loaded.map);
            state.metrics.links_loaded(map.counts(), unix_seconds());
            info!(
                message = "Links reloaded.",
                source = %state.control.links_source,
                records = map.len(),
                invalid = loaded.invalid.len()
            );
            Ok(ReloadReport {
                records: map.len(),
                invalid: loaded.invalid,
            })
        }
        Err(load_error) => {
            state.metrics.links_load_failed();
            error!(
                message = "Links reload failed; the previous links stay in service.",
                source = %state.control.links_source,
                error = %load_error
            );
            Err(ReloadError(load_error))
        }
    }
}

/// Reads the GeoIP database again and swaps it in; a file that cannot be read
/// leaves the loaded one in service (links reload regardless).
fn reload_geoip(state: &AppState, path: &std::path::Path) {
    match crate::geoip::GeoIp::open(path) {
        Ok(geoip) => {
            state
                .metrics
                .geoip_loaded(&geoip.database, geoip.build_epoch);
            info!(message = "GeoIP database reloaded.", path = %path.display(), database = %geoip.database, build_epoch = geoip.build_epoch);
            state.edge.geoip.store(Some(std::sync::Arc::new(geoip)));
        }
        Err(error) => {
            error!(message = "GeoIP reload failed; the loaded database stays in service.", %error);
        }
    }
}

/// Logs each record a load skipped, with its line and reason.
pub fn log_skipped(source: &LinksSource, invalid: &[LineError]) {
    for error in invalid {
        warn!(
            message = "Invalid link record skipped.",
            source = %source,
            line = error.line,
            reason = %error.reason
        );
    }
}

/// Unix milliseconds now.
pub fn unix_millis() -> i64 {
    (unix_seconds() * 1000.0) as i64
}

pub fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
