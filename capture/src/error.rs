pub use std::io::Error as CaptureError;
