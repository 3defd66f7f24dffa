mod proto {
    #![allow(unreachable_pub)]
    include!("generated/mod.rs");
    pub use self::webrtc::pb::{mod_Message::Flag, Message};
}

mod fingerprint;
pub mod noise;
pub mod sdp;
mod stream;
mod transport;

pub use fingerprint::{Fingerprint, SHA256};
pub use stream::{DropListener, Stream, MAX_MSG_LEN};
pub use transport::parse_webrtc_dial_addr;

/// 32 bytes from hex, for tests (tabnode: instead of the `hex-literal`
/// dev-dependency, so the crate's tests run from the tabnode workspace).
#[cfg(test)]
pub(crate) fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(&hex::decode(s).expect("hex"));
    out
}
