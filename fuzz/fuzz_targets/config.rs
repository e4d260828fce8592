//! Any stdin, under every verb: the skel answers with a result or a coded
//! error object and never panics.
#![no_main]

use cni_core::skel::{dispatch, Context, Plugin};
use cni_core::{CniResult, Result};
use libfuzzer_sys::fuzz_target;

struct Echo;
impl Plugin for Echo {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        Ok(ctx.prev_result()?.unwrap_or_default())
    }
    fn del(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    fn check(&self, ctx: &Context) -> Result<()> {
        ctx.prev_result().map(|_| ())
    }
    fn status(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    fn gc(&self, ctx: &Context) -> Result<()> {
        let _ = ctx.conf.gc_valid_attachments();
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
        let env = |k: &str| -> Option<String> {
            Some(match k {
                "CNI_COMMAND" => cmd.to_string(),
                "CNI_CONTAINERID" => "c1".into(),
                "CNI_NETNS" => "/var/run/netns/x".into(),
                "CNI_IFNAME" => "eth0".into(),
                "CNI_PATH" => "/nonexistent".into(),
                _ => return None,
            })
        };
        let mut out = Vec::new();
        let ok = dispatch(&Echo, &env, &mut &data[..], &mut out);
        if !ok {
            // Every failure is exactly one JSON error object with a code.
            let v: serde_json::Value = serde_json::from_slice(&out).expect("error output is JSON");
            assert!(v["code"].as_u64().is_some(), "error without code: {v}");
        }
    }
});
