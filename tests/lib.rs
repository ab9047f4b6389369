//! Shared helpers of the integration tests.

use deathtensors_plugins as _;
