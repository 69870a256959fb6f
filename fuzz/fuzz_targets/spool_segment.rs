//! The spool segment reader over any bytes (a torn write, a bit flip, another
//! file dropped in the directory), as replay reads them: never a panic, frame
//! ends strictly increasing within what was read, everything read once at the
//! end of the data; and intact frames written before the damage all come back.
#![no_main]

use clickedge::sink::spool::{parse_frames, push_frame_with, write_v1_frame, Frame};
use clickedge::sink::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&records, damage)) = data.split_first() else {
        return;
    };
    // Intact frames first (their keys and values cut from the input; written as
    // an older build's clicks, and as the workers' batches build clicks and
    // actions), then the input itself as damage.
    let mut segment = Vec::new();
    let mut written = Vec::new();
    for n in 0..usize::from(records % 8) {
        let value = damage.get(n * 7..(n * 7 + 13).min(damage.len())).unwrap_or_default();
        let key = format!("key-{n}");
        let topic = match n % 3 {
            0 => {
                write_v1_frame(&mut segment, key.as_bytes(), value).unwrap();
                Topic::Clicks
            }
            1 => Topic::Clicks,
            _ => Topic::Actions,
        };
        if n % 3 != 0 {
            push_frame_with(&mut segment, topic, key.as_bytes(), |buf| {
                buf.extend_from_slice(value)
            })
            .unwrap();
        }
        written.push((topic, key.into_bytes(), value.to_vec()));
    }
    let intact = segment.len() as u64;
    segment.extend_from_slice(damage);

    for (from, at_end, budget) in [(0, true, u64::MAX), (0, false, u64::MAX), (5, true, 64)] {
        let frames = parse_frames(&segment, from, at_end, budget);
        let mut last = from;
        for frame in &frames {
            let end = match frame {
                Frame::Record { end, .. } | Frame::Corrupt { end } => *end,
            };
            assert!(end > last, "frame end {end} after {last}");
            assert!(end <= from + segment.len() as u64);
            last = end;
        }
        if at_end && budget == u64::MAX {
            assert_eq!(last, from + segment.len() as u64, "bytes left unread at the end");
        }
        if budget == u64::MAX {
            let read: Vec<_> = frames
                .iter()
                .filter_map(|f| match f {
                    Frame::Record {
                        topic,
                        key,
                        value,
                        end,
                    } if *end - from <= intact => Some((*topic, key.clone(), value.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(read, written, "intact frames lost");
        }
    }
});
