//! A lab kept running between commands: `txlab up` starts the local
//! platform with every link through the proxy and leaves it running in the
//! background; `txlab chaos on/off/status` and `txlab down` find it through
//! its state file and talk to its control API on loopback.
//!
//! - [`state`]: `lab.json` in the state directory: where the lab is.
//! - [`control`]: the control API the background lab serves.

pub mod control;
pub mod state;

pub use state::LabState;
