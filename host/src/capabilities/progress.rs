//! The `progress` capability: the guest's events rendered as `Progress` says (bars, plain
//! lines, JSON lines or nothing). The guest decides what happened; this only shows it.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use crate::bindings::ocipush::core::progress::{Event, Host, LayerBytes, ManifestChange};
use crate::encode::Encoding;
use crate::progress::Progress;
use crate::state::HostState;

/// How often plain output may print a progress line for one layer.
const PLAIN_INTERVAL: Duration = Duration::from_secs(2);

impl Host for HostState {
    fn report(&mut self, event: Event) -> wasmtime::Result<()> {
        render(&mut self.progress, &self.encodings, &event);
        Ok(())
    }
}

fn render(progress: &mut Progress, encodings: &HashMap<String, Encoding>, event: &Event) {
    match progress {
        Progress::Json => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{}", json_line(event));
        }
        Progress::Plain { last, layers } => {
            if let Event::Started(started) = event {
                *layers = started.layers;
            }
            let due = match event {
                Event::LayerProgress(b) if b.done < b.total => {
                    let now = Instant::now();
                    let last = last.entry(b.layer.index).or_insert(now);
                    if now.duration_since(*last) < PLAIN_INTERVAL {
                        false
                    } else {
                        *last = now;
                        true
                    }
                }
                Event::LayerProgress(_) => false,
                _ => true,
            };
            if due {
                eprintln!("{}", plain_line(event, *layers, encodings));
            }
        }
        Progress::Bars {
            multi,
            bars,
            layers,
        } => bar_event(multi, bars, layers, encodings, event),
        Progress::None | Progress::Quiet => {}
    }
}

fn bar_event(
    multi: &MultiProgress,
    bars: &mut HashMap<u32, ProgressBar>,
    layers: &mut u32,
    encodings: &HashMap<String, Encoding>,
    event: &Event,
) {
    match event {
        Event::Started(s) => {
            *layers = s.layers;
            let _ = multi.println(format!(
                "pushing {}: {} layers, {}",
                s.image,
                s.layers,
                size(s.total_bytes)
            ));
        }
        Event::LayerStarted(b) => {
            let bar = multi.add(ProgressBar::new(b.total));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("layer {}/{}", b.layer.index, layers));
            bars.insert(b.layer.index, bar);
        }
        Event::LayerProgress(b) => {
            if let Some(bar) = bars.get(&b.layer.index) {
                bar.set_position(b.done);
                bar.set_message(format!("sent {}", size(b.sent)));
            }
        }
        Event::LayerDone(d) => {
            if let Some(bar) = bars.get(&d.layer.index) {
                bar.finish_with_message(format!(
                    "image layer {}: {} ({})",
                    d.position,
                    short(&d.digest),
                    size(d.size)
                ));
            }
        }
        Event::LayerSkipped(_)
        | Event::ConfigDone(_)
        | Event::ManifestDone(_)
        | Event::Verified(_)
        | Event::ManifestRebuilt(_)
        | Event::BuildOutput(_)
        | Event::Built(_) => {
            let _ = multi.println(plain_line(event, *layers, encodings));
        }
    }
}

fn json_line(event: &Event) -> String {
    let bytes = |name: &str, b: &LayerBytes| json!({"event": name, "layer": b.layer.index, "entry": b.layer.entry, "done": b.done, "sent": b.sent, "total": b.total});
    let value = match event {
        Event::Started(s) => {
            json!({"event": "started", "image": s.image, "layers": s.layers, "total_bytes": s.total_bytes})
        }
        Event::LayerStarted(b) => bytes("layer-started", b),
        Event::LayerProgress(b) => bytes("layer-progress", b),
        Event::LayerDone(d) => json!({
            "event": "layer-done", "layer": d.layer.index, "entry": d.layer.entry,
            "diff_id": d.diff_id, "position": d.position, "digest": d.digest, "size": d.size,
        }),
        Event::LayerSkipped(p) => json!({
            "event": "layer-skipped", "position": p.position, "diff_id": p.diff_id, "digest": p.digest, "size": p.size,
            "mounted_from": p.mounted_from,
        }),
        Event::ConfigDone(digest) => json!({"event": "config-done", "digest": digest}),
        Event::ManifestDone(m) => {
            json!({"event": "manifest-done", "reference": m.reference, "digest": m.digest})
        }
        Event::Verified(v) => {
            json!({"event": "verified", "digest": v.digest, "manifests": v.manifests, "blobs": v.blobs})
        }
        Event::ManifestRebuilt(r) => {
            json!({"event": "manifest-rebuilt", "source_manifest": r.source_manifest, "change": change_name(r.change)})
        }
        Event::BuildOutput(line) => json!({"event": "build-output", "line": line}),
        Event::Built(b) => json!({"event": "built", "tag": b.tag, "id": b.id}),
    };
    value.to_string()
}

fn plain_line(event: &Event, layers: u32, encodings: &HashMap<String, Encoding>) -> String {
    match event {
        Event::Started(s) => format!(
            "pushing {}: {} layers, {}",
            s.image,
            s.layers,
            size(s.total_bytes)
        ),
        Event::LayerStarted(b) => format!(
            "layer {}/{layers} {}: {}",
            b.layer.index,
            b.layer.entry,
            size(b.total)
        ),
        Event::LayerProgress(b) => format!(
            "layer {}/{layers}: {} of {} read, {} sent",
            b.layer.index,
            size(b.done),
            size(b.total),
            size(b.sent)
        ),
        Event::LayerDone(d) => format!(
            "layer {}/{layers} done: image layer {}, {} ({}{})",
            d.layer.index,
            d.position,
            d.digest,
            size(d.size),
            // A layer this host did not finish (another guest's report) is not named.
            encodings
                .get(&d.digest)
                .map_or(String::new(), |e| format!(" {e}"))
        ),
        Event::LayerSkipped(p) => match &p.mounted_from {
            Some(source) => format!(
                "image layer {}/{layers} mounted from {source}: {} ({})",
                p.position,
                p.digest,
                size(p.size)
            ),
            None => format!(
                "image layer {}/{layers} already at the destination: {} ({})",
                p.position,
                p.digest,
                size(p.size)
            ),
        },
        Event::ConfigDone(digest) => format!("config {digest} stored"),
        Event::ManifestDone(m) => format!("manifest {} written as {}", m.digest, m.reference),
        Event::Verified(v) => format!(
            "verified {}: read back {} manifest{} by digest, all {} blobs present",
            v.digest,
            v.manifests,
            if v.manifests == 1 { "" } else { "s" },
            v.blobs
        ),
        Event::ManifestRebuilt(r) => format!(
            "manifest rebuilt ({} given): the source's own manifest {} is not published as it is, so the registry digest is not its digest",
            match r.change {
                ManifestChange::Compression => "--compression",
                ManifestChange::Format => "--format",
                ManifestChange::Annotations => "--annotation",
                ManifestChange::Platforms => "--platform",
            },
            r.source_manifest
        ),
        Event::BuildOutput(line) => line.clone(),
        Event::Built(b) => format!("built {} as {}", b.tag, b.id),
    }
}

/// A `manifest-change` as plain and JSON output name it.
fn change_name(change: ManifestChange) -> &'static str {
    match change {
        ManifestChange::Compression => "compression",
        ManifestChange::Format => "format",
        ManifestChange::Annotations => "annotations",
        ManifestChange::Platforms => "platforms",
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min("sha256:".len() + 12)]
}

fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::ocipush::core::progress::{LayerFinished, LayerRef};

    #[test]
    fn json_lines_carry_event_layer_and_bytes() {
        let layer = LayerRef {
            index: 2,
            entry: "abc/layer.tar".into(),
        };
        let line = json_line(&Event::LayerProgress(LayerBytes {
            layer: layer.clone(),
            done: 5,
            sent: 3,
            total: 9,
        }));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "layer-progress");
        assert_eq!(
            (
                v["layer"].as_u64(),
                v["done"].as_u64(),
                v["sent"].as_u64(),
                v["total"].as_u64()
            ),
            (Some(2), Some(5), Some(3), Some(9))
        );
        let done = json_line(&Event::LayerDone(LayerFinished {
            layer,
            diff_id: "sha256:d".into(),
            position: 3,
            digest: "sha256:g".into(),
            size: 4,
        }));
        let v: serde_json::Value = serde_json::from_str(&done).unwrap();
        assert_eq!(
            (v["diff_id"].as_str(), v["digest"].as_str()),
            (Some("sha256:d"), Some("sha256:g"))
        );
        assert_eq!(v["position"], 3);
        assert!(!done.contains('\n'));
    }

    #[test]
    fn plain_lines_name_the_layer_and_its_position() {
        let layer = LayerRef {
            index: 1,
            entry: "x/layer.tar".into(),
        };
        let line = plain_line(
            &Event::LayerStarted(LayerBytes {
                layer,
                done: 0,
                sent: 0,
                total: 2048,
            }),
            3,
            &HashMap::new(),
        );
        assert_eq!(line, "layer 1/3 x/layer.tar: 2.00 KiB");
        let done = |encodings: &HashMap<String, Encoding>| {
            let finished = LayerFinished {
                layer: LayerRef {
                    index: 2,
                    entry: "y/layer.tar".into(),
                },
                diff_id: "sha256:d".into(),
                position: 1,
                digest: "sha256:z".into(),
                size: 1024,
            };
            plain_line(&Event::LayerDone(finished), 3, encodings)
        };
        let zstd = HashMap::from([("sha256:z".to_string(), Encoding::Zstd)]);
        assert_eq!(
            done(&zstd),
            "layer 2/3 done: image layer 1, sha256:z (1.00 KiB zstd)"
        );
        assert_eq!(
            done(&HashMap::new()),
            "layer 2/3 done: image layer 1, sha256:z (1.00 KiB)"
        );
    }
}
