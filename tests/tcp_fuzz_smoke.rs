//! Smoke run of the TCP engine fuzz entry points (part of `make test`): thousands of seeded
//! random scripts through `stack::tcp::fuzzing::engine` (every scenario byte, random segments,
//! time jumps, user calls, ICMP errors, export/import) and random or mutated state images
//! through `stack::tcp::fuzzing::image`. A panic or failed engine invariant fails the test;
//! `make fuzz` runs the same functions under cargo-fuzz for coverage-guided search.

use msock::stack::tcp::fuzzing;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_engine_scripts_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for scenario in 0..=255u8 {
        for _ in 0..12 {
            let len = 1 + (rng.next() % 1500) as usize;
            let mut script = rng.bytes(len);
            script[0] = scenario;
            fuzzing::engine(&script);
        }
    }
}

#[test]
fn mutated_real_images_never_panic() {
    let mut rng = Rng(0x5151_5151_2323_2323);
    let samples = fuzzing::sample_images();
    assert!(samples.len() >= 8);
    for image in &samples {
        // Unmodified images import and work.
        fuzzing::image(image);
        for _ in 0..300 {
            let mut m = image.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % m.len();
                m[at] ^= 1 << (rng.next() % 8);
            }
            if rng.next().is_multiple_of(8) {
                m.truncate((rng.next() as usize) % m.len());
            }
            fuzzing::image(&m);
        }
    }
}

#[test]
fn random_and_mutated_images_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..2000 {
        let len = (rng.next() % 600) as usize;
        let mut image = rng.bytes(len);
        if len >= 6 && rng.next().is_multiple_of(2) {
            image[..6].copy_from_slice(b"MSTC\x01\x00");
        }
        fuzzing::image(&image);
    }
}
