//! The real clock, read outside `proto` and handed to it as a [`Time`].

use crate::proto::Time;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub fn now() -> Time {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time::new(Instant::now(), since_epoch)
}
