//! The outbox entry's bytes on disk. Entries written by earlier builds stay readable: each
//! fixture is the exact encoding of an entry, kept as written by the build of its format version
//! (2: a 64-bit FNV-1a checksum; 3, written now: CRC-32C).

use ryw::clock::HybridTimestamp;
use ryw::{ScopeKey, SessionId, WriteId};
use ryw_outbox::entry::{DecodeError, Entry};

/// Nothing but the fixed fields: no scopes, no session token, an empty request; not applied.
fn minimal() -> Entry {
    Entry {
        write_id: WriteId::new(SessionId::from_u128(1), 0, 1),
        timestamp: HybridTimestamp::new(0),
        may_have_applied: false,
        deferred_at: 0,
        scopes: Vec::new(),
        session: String::new(),
        request: Vec::new(),
    }
}

/// A write an attempt may have applied (replayed as a replay), with two scopes, a short token
/// and a short request.
fn replay() -> Entry {
    Entry {
        write_id: WriteId::new(
            SessionId::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            3,
            42,
        ),
        timestamp: HybridTimestamp::new(1_700_000_000_123_456),
        may_have_applied: true,
        deferred_at: 1_700_000_000,
        scopes: vec![
            ScopeKey::from_bits(0x0011_2233_4455_6677),
            ScopeKey::from_bits(0x8899_aabb_ccdd_eeff),
        ],
        session: "v2.token".to_owned(),
        request: b"put k=1".to_vec(),
    }
}

/// Every field at its widest: lengths past one byte (a 300-byte request, a 100-byte token).
fn large() -> Entry {
    Entry {
        write_id: WriteId::new(SessionId::from_u128(u128::MAX), u64::MAX, u64::MAX - 1),
        timestamp: HybridTimestamp::new(u64::MAX >> 1),
        may_have_applied: false,
        deferred_at: u64::MAX,
        scopes: (0..5u64)
            .map(|i| ScopeKey::from_bits(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect(),
        session: "abcdefghij".repeat(10),
        request: (0..300u32).map(|i| (i * 7 % 256) as u8).collect(),
    }
}

/// [`minimal`], as format version 2 wrote it.
const V2_MINIMAL: &str = concat!(
    "5259574f02010000000000000000000000000000000000000000000000010000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "000010406d09e1b6944d",
);

/// [`replay`], as format version 2 wrote it.
const V2_REPLAY: &str = concat!(
    "5259574f021032547698badcfeefcdab896745230103000000000000002a0000",
    "000000000040222018240a06000100f153650000000002000000776655443322",
    "1100ffeeddccbbaa99880800000076322e746f6b656e07000000707574206b3d",
    "317b18071da13b1360",
);

/// [`large`], as format version 2 wrote it.
const V2_LARGE: &str = concat!(
    "5259574f02fffffffffffffffffffffffffffffffffffffffffffffffffeffff",
    "ffffffffffffffffffffffff7f00ffffffffffffffff05000000000000000000",
    "0000157c4a7fb979379e2af894fe72f36e3c3f74df7d2c6da6da54f029fde5e6",
    "dd78640000006162636465666768696a6162636465666768696a616263646566",
    "6768696a6162636465666768696a6162636465666768696a6162636465666768",
    "696a6162636465666768696a6162636465666768696a6162636465666768696a",
    "6162636465666768696a2c01000000070e151c232a31383f464d545b62697077",
    "7e858c939aa1a8afb6bdc4cbd2d9e0e7eef5fc030a11181f262d343b42495057",
    "5e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff060d141b22293037",
    "3e454c535a61686f767d848b9299a0a7aeb5bcc3cad1d8dfe6edf4fb02091017",
    "1e252c333a41484f565d646b727980878e959ca3aab1b8bfc6cdd4dbe2e9f0f7",
    "fe050c131a21282f363d444b525960676e757c838a91989fa6adb4bbc2c9d0d7",
    "dee5ecf3fa01080f161d242b323940474e555c636a71787f868d949ba2a9b0b7",
    "bec5ccd3dae1e8eff6fd040b121920272e353c434a51585f666d747b82899097",
    "9ea5acb3bac1c8cfd6dde4ebf2f900070e151c232a31383f464d545b62697077",
    "7e858c939aa1a8afb6bdc4cbd2d9e0e7eef5fc030a11181f262d81cfbdafad0c",
    "464f",
);

/// [`minimal`], as format version 3 writes it.
const V3_MINIMAL: &str = concat!(
    "5259574f03010000000000000000000000000000000000000000000000010000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000272c8acd",
);

/// [`replay`], as format version 3 writes it.
const V3_REPLAY: &str = concat!(
    "5259574f031032547698badcfeefcdab896745230103000000000000002a0000",
    "000000000040222018240a06000100f153650000000002000000776655443322",
    "1100ffeeddccbbaa99880800000076322e746f6b656e07000000707574206b3d",
    "3125614d0d",
);

/// [`large`], as format version 3 writes it.
const V3_LARGE: &str = concat!(
    "5259574f03fffffffffffffffffffffffffffffffffffffffffffffffffeffff",
    "ffffffffffffffffffffffff7f00ffffffffffffffff05000000000000000000",
    "0000157c4a7fb979379e2af894fe72f36e3c3f74df7d2c6da6da54f029fde5e6",
    "dd78640000006162636465666768696a6162636465666768696a616263646566",
    "6768696a6162636465666768696a6162636465666768696a6162636465666768",
    "696a6162636465666768696a6162636465666768696a6162636465666768696a",
    "6162636465666768696a2c01000000070e151c232a31383f464d545b62697077",
    "7e858c939aa1a8afb6bdc4cbd2d9e0e7eef5fc030a11181f262d343b42495057",
    "5e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff060d141b22293037",
    "3e454c535a61686f767d848b9299a0a7aeb5bcc3cad1d8dfe6edf4fb02091017",
    "1e252c333a41484f565d646b727980878e959ca3aab1b8bfc6cdd4dbe2e9f0f7",
    "fe050c131a21282f363d444b525960676e757c838a91989fa6adb4bbc2c9d0d7",
    "dee5ecf3fa01080f161d242b323940474e555c636a71787f868d949ba2a9b0b7",
    "bec5ccd3dae1e8eff6fd040b121920272e353c434a51585f666d747b82899097",
    "9ea5acb3bac1c8cfd6dde4ebf2f900070e151c232a31383f464d545b62697077",
    "7e858c939aa1a8afb6bdc4cbd2d9e0e7eef5fc030a11181f262d6a5eb6ed",
);

/// An entry and its bytes, as the builds of each format version wrote them.
struct Fixture {
    name: &'static str,
    entry: fn() -> Entry,
    version_2: &'static str,
    version_3: &'static str,
}

impl Fixture {
    fn version_2(&self) -> Vec<u8> {
        unhex(self.version_2)
    }

    fn version_3(&self) -> Vec<u8> {
        unhex(self.version_3)
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const FIXTURES: [Fixture; 3] = [
    Fixture {
        name: "minimal",
        entry: minimal,
        version_2: V2_MINIMAL,
        version_3: V3_MINIMAL,
    },
    Fixture {
        name: "replay",
        entry: replay,
        version_2: V2_REPLAY,
        version_3: V3_REPLAY,
    },
    Fixture {
        name: "large",
        entry: large,
        version_2: V2_LARGE,
        version_3: V3_LARGE,
    },
];

/// Every bit of `written` flipped in turn: each is a typed error, never a panic and never an
/// entry.
fn every_altered_bit_is_an_error(name: &str, written: &[u8]) {
    for i in 0..written.len() {
        for bit in 0..8 {
            let mut altered = written.to_vec();
            altered[i] ^= 1 << bit;
            assert!(
                Entry::decode(&altered).is_err(),
                "{name}: byte {i}, bit {bit}"
            );
        }
    }
}

#[test]
fn version_2_entries_decode_to_the_entries_they_were_written_from() {
    for f in &FIXTURES {
        assert_eq!(Entry::decode(&f.version_2()), Ok((f.entry)()), "{}", f.name);
    }
}

#[test]
fn every_altered_bit_of_a_version_2_entry_is_a_typed_error() {
    for f in &FIXTURES {
        every_altered_bit_is_an_error(f.name, &f.version_2());
    }
}

#[test]
fn entries_are_written_in_version_3_and_read_back() {
    for f in &FIXTURES {
        assert_eq!((f.entry)().encode(), f.version_3(), "{}", f.name);
        assert_eq!(Entry::decode(&f.version_3()), Ok((f.entry)()), "{}", f.name);
    }
}

#[test]
fn a_version_2_entry_rewritten_is_the_same_entry_in_version_3() {
    for f in &FIXTURES {
        let read = Entry::decode(&f.version_2()).unwrap();
        assert_eq!(read.encode(), f.version_3(), "{}", f.name);
    }
}

#[test]
fn every_altered_bit_of_a_version_3_entry_is_a_typed_error() {
    for f in &FIXTURES {
        every_altered_bit_is_an_error(f.name, &f.version_3());
    }
}

#[test]
fn a_later_format_version_is_refused_as_unknown() {
    for f in &FIXTURES {
        for mut bytes in [f.version_2(), f.version_3()] {
            bytes[4] = 4;
            assert_eq!(
                Entry::decode(&bytes),
                Err(DecodeError::Format),
                "{}",
                f.name
            );
        }
    }
}
