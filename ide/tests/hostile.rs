//! Hostile guests: random register traffic, packets, PRD tables, medium changes and
//! resets (the fuzz target's interpreter, `fuzz/fuzz_targets/ops.rs`, over seeded
//! random inputs). Nothing panics, and a reset disk still answers IDENTIFY.

#[path = "../fuzz/fuzz_targets/ops.rs"]
#[allow(dead_code)]
mod ops;

#[test]
fn random_guests_do_not_break_the_controller() {
    let mut rng = fastrand::Rng::with_seed(0x1de);
    for round in 0..300 {
        let len = rng.usize(0..2048);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        // Bias towards well-formed commands: sprinkle real opcodes into register 7.
        for i in (0..len.saturating_sub(3)).step_by(97) {
            data[i] = 0x00;
            data[i + 1] = 6;
            data[i + 2] = *rng
                .choice(&[
                    0x20u8, 0x24, 0x30, 0xc4, 0xc8, 0xca, 0x25, 0x35, 0xa0, 0xec, 0xe7,
                ])
                .unwrap();
        }
        if !ops::run(&data) {
            eprintln!(
                "SKIPPED random_guests_do_not_break_the_controller: no io_uring (round {round})"
            );
            return;
        }
        let _ = round;
    }
}

#[test]
fn hand_written_hostile_sequences() {
    let cases: &[&[u8]] = &[
        // PACKET then a READ(12) of 2^32-1 sectors at the last LBA.
        &[
            0x80, 6, 0xa0, 0x80, 6, 0xa0, 0x88, 0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0, 0,
        ],
        // READ DMA with the bus master pointed past RAM, started twice.
        &[
            0x00, 6, 0xc8, 0x06, 4, 0xf0, 0xff, 0xff, 0x05, 0, 0x09, 0x05, 0, 0x09, 0x09, 3,
        ],
        // A PRD table of 64 KiB entries that never ends.
        &[
            0x07, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0x00, 6, 0x25, 0x05, 0, 0x09, 0x09, 7,
        ],
        // SRST in the middle of a PIO write.
        &[
            0x00, 6, 0x30, 0x02, 1, 2, 0x04, 0x04, 0x09, 1, 0x04, 0x00, 0x02, 3, 4,
        ],
        // Medium change storm with reset.
        &[0x0a, 6, 0x0a, 7, 0x0a, 0, 0x0b, 0x0a, 5, 0x09, 7],
    ];
    for case in cases {
        if !ops::run(case) {
            eprintln!("SKIPPED hand_written_hostile_sequences: no io_uring");
            return;
        }
    }
}
