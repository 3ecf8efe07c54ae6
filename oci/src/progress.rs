//! How far transfers have come, told to whoever asked ([`RegistryOptions::progress`]). This
//! library draws nothing itself; the `tollgate` binary draws a bar on stderr.
//!
//! [`RegistryOptions::progress`]: crate::RegistryOptions::progress

use std::sync::Arc;

/// Hears of transfers as they start: one [`TransferMeter`] per transfer, so transfers that run
/// at the same time through the same options keep apart.
pub trait TransferProgress: Send + Sync {
    /// A transfer of `total` bytes starts; `label` says what it is (`pushing REF`,
    /// `pulling REF`). The meter returned hears how it goes.
    fn start(&self, label: &str, total: u64) -> Box<dyn TransferMeter>;
}

/// One transfer in flight.
pub trait TransferMeter: Send + Sync {
    /// `bytes` more were transferred (or found already present at the other end).
    fn advance(&self, bytes: u64);
    /// The transfer completed. A transfer that fails is dropped without being finished.
    fn finish(&self);
}

/// The meter of one transfer, or nothing when nobody asked for progress.
#[derive(Clone)]
pub(crate) struct Meter(Option<Arc<dyn TransferMeter>>);

impl Meter {
    /// Starts a transfer of `total` bytes on `progress`, if any; `label` is only made when asked.
    pub(crate) fn start(
        progress: Option<&Arc<dyn TransferProgress>>,
        total: u64,
        label: impl FnOnce() -> String,
    ) -> Meter {
        Meter(progress.map(|p| Arc::from(p.start(&label(), total))))
    }

    pub(crate) fn advance(&self, bytes: u64) {
        if let Some(meter) = &self.0 {
            meter.advance(bytes);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(meter) = &self.0 {
            meter.finish();
        }
    }
}
