//! How a fleet is rolled out: the order of its clusters, the waves they are cut into (a canary
//! first), and the share of them one process of N takes (`--shard I/N`).

use super::select::Cluster;
use serde::{Deserialize, Serialize};

/// One element of `--waves`: the size of that wave.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Size {
    Count(usize),
    /// A percentage of the selection, rounded up (at least 1); 100% takes what remains.
    Percent(u32),
}

/// `--waves 1,10%,50%,100%`.
pub fn parse_waves(s: &str) -> Result<Vec<Size>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let size = match part.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Size::Percent(n),
                _ => return Err(format!("'{part}': a percentage from 1% to 100%")),
            },
            None => match part.parse::<usize>() {
                Ok(n) if n >= 1 => Size::Count(n),
                _ => {
                    return Err(format!(
                        "'{part}': a wave's size is a count (at least 1) or a percentage (10%)"
                    ));
                }
            },
        };
        out.push(size);
    }
    Ok(out)
}

/// The sizes of the waves for `n` clusters: each element's size in turn, the last wave (or
/// a 100% one) taking whatever remains; no empty wave.
pub fn sizes(n: usize, spec: &[Size]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n;
    for (i, s) in spec.iter().enumerate() {
        if left == 0 {
            break;
        }
        let last = i + 1 == spec.len() || *s == Size::Percent(100);
        let want = match s {
            _ if last => left,
            Size::Count(c) => *c,
            Size::Percent(p) => (n * *p as usize).div_ceil(100).max(1),
        };
        let take = want.min(left);
        out.push(take);
        left -= take;
        if last {
            break;
        }
    }
    if left > 0 {
        out.push(left);
    }
    out
}

/// `--order`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Order {
    Name,
    /// Shuffled with this seed (journaled, so a resume keeps the order).
    Random(u64),
    /// By the value of this tag (clusters without it last), then by name.
    Tag(String),
}

pub fn parse_order(s: &str) -> Result<Order, String> {
    match s {
        "name" => Ok(Order::Name),
        "random" => Ok(Order::Random(seed())),
        _ => match s.strip_prefix("tag:") {
            Some(k) if !k.is_empty() => Ok(Order::Tag(k.to_string())),
            _ => Err(format!("'{s}': name, random or tag:KEY")),
        },
    }
}

fn seed() -> u64 {
    let u = uuid::Uuid::new_v4().as_u128();
    (u as u64) ^ ((u >> 64) as u64)
}

/// SplitMix64: a small, stable generator (the order must not change with a library's).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_key(c: &Cluster) -> (String, String) {
    (c.name.to_ascii_lowercase(), c.id.to_ascii_lowercase())
}

/// The clusters in rollout order.
pub fn order(mut clusters: Vec<Cluster>, order: &Order) -> Vec<Cluster> {
    clusters.sort_by_key(name_key);
    match order {
        Order::Name => {}
        Order::Random(seed) => {
            let mut s = *seed;
            for i in (1..clusters.len()).rev() {
                let j = (next(&mut s) % (i as u64 + 1)) as usize;
                clusters.swap(i, j);
            }
        }
        Order::Tag(k) => clusters.sort_by_key(|c| match c.tags.get(k) {
            Some(v) => (0, v.to_ascii_lowercase(), name_key(c)),
            None => (1, String::new(), name_key(c)),
        }),
    }
    clusters
}

/// Cuts ordered clusters into waves.
pub fn cut<T: Clone>(items: &[T], spec: &[Size]) -> Vec<Vec<T>> {
    let mut at = 0;
    sizes(items.len(), spec)
        .into_iter()
        .map(|n| {
            let w = items[at..at + n].to_vec();
            at += n;
            w
        })
        .collect()
}

/// `--shard I/N` (0-based I).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub of: u32,
}

pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}': I/N, for example 0/4 (I counts from 0)"))?;
    let index: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("'{i}' is not a whole number"))?;
    let of: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{n}' is not a whole number"))?;
    if of == 0 || index >= of {
        return Err(format!(
            "shard {index}/{of}: N must be at least 1 and I below N (0-based: {s} with N shards runs shards 0 to N-1)"
        ));
    }
    Ok(Shard { index, of })
}

impl Shard {
    /// Whether the cluster is this shard's: a hash of its lowercased ARM id, mod N (stable
    /// across processes, machines and versions).
    pub fn owns(&self, arm_id: &str) -> bool {
        use sha2::Digest;
        let d = sha2::Sha256::digest(arm_id.trim().to_ascii_lowercase().as_bytes());
        let h = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
        h % self.of as u64 == self.index as u64
    }
}

/// A default `--max-parallel`: each cluster run is about 40 MiB; a quarter of the memory
/// available, at least 1, at most 16 (the machine's CPUs and the services' limits bound it too).
pub fn default_parallel(mem_available_kib: Option<u64>) -> usize {
    const PER_RUN_KIB: u64 = 40 * 1024;
    match mem_available_kib {
        Some(kib) => ((kib / 4 / PER_RUN_KIB) as usize).clamp(1, 16),
        None => 4,
    }
}

/// MemAvailable from /proc/meminfo, in KiB.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> Cluster {
        Cluster {
            id: format!(
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerService/managedClusters/{name}"
            ),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_element_is_the_size_of_its_wave_and_the_last_takes_the_rest() {
        let w = parse_waves("1,2,100%").unwrap();
        assert_eq!(sizes(8, &w), [1, 2, 5]);
        let w = parse_waves("1,25%,100%").unwrap();
        assert_eq!(sizes(12, &w), [1, 3, 8]);
        let w = parse_waves("1,10%,50%,100%").unwrap();
        assert_eq!(sizes(100, &w), [1, 10, 50, 39]);
        assert_eq!(sizes(3, &w), [1, 1, 1]);
        assert_eq!(sizes(1, &w), [1]);
        assert_eq!(sizes(0, &w), Vec::<usize>::new());
        // The last element takes the rest whatever it says.
        assert_eq!(sizes(10, &parse_waves("2,3").unwrap()), [2, 8]);
        assert_eq!(sizes(10, &parse_waves("100%").unwrap()), [10]);
        assert!(parse_waves("0").is_err() && parse_waves("150%").is_err());
        assert!(parse_waves("1,x").is_err());
    }

    #[test]
    fn waves_by_name_put_the_second_and_third_in_wave_two() {
        let names = ["h", "b", "a", "g", "c", "f", "e", "d"];
        let cs = order(names.iter().map(|n| c(n)).collect(), &Order::Name);
        let waves = cut(&cs, &parse_waves("1,2,100%").unwrap());
        let got: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.iter().map(|c| c.name.as_str()).collect())
            .collect();
        assert_eq!(
            got,
            vec![vec!["a"], vec!["b", "c"], vec!["d", "e", "f", "g", "h"]]
        );
    }

    #[test]
    fn a_seeded_random_order_is_the_same_each_time_and_a_tag_order_groups() {
        let cs: Vec<Cluster> = (0..20).map(|i| c(&format!("c{i:02}"))).collect();
        let a = order(cs.clone(), &Order::Random(7));
        let b = order(cs.clone(), &Order::Random(7));
        assert_eq!(a, b);
        assert_ne!(a, order(cs.clone(), &Order::Name));
        assert_ne!(a, order(cs.clone(), &Order::Random(8)));
        let mut t = vec![c("x"), c("y"), c("z")];
        t[0].tags.insert("ring".into(), "2".into());
        t[2].tags.insert("ring".into(), "1".into());
        let got: Vec<String> = order(t, &Order::Tag("ring".into()))
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(got, ["z", "x", "y"]);
        assert!(parse_order("tag:").is_err() && parse_order("size").is_err());
    }

    #[test]
    fn shards_are_disjoint_and_together_the_whole_fleet() {
        let ids: Vec<String> = (0..200).map(|i| c(&format!("aks-{i}")).id).collect();
        let shards: Vec<Shard> = (0..4)
            .map(|i| parse_shard(&format!("{i}/4")).unwrap())
            .collect();
        let mut counts = [0; 4];
        for id in &ids {
            let owners: Vec<usize> = (0..4).filter(|&i| shards[i].owns(id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            counts[owners[0]] += 1;
            // Case does not move a cluster between shards (ARM ids are case-insensitive).
            assert!(shards[owners[0]].owns(&id.to_ascii_uppercase()));
        }
        assert!(counts.iter().all(|&n| n > 20), "{counts:?}");
        assert!(parse_shard("4/4").is_err() && parse_shard("1").is_err());
    }

    #[test]
    fn the_default_parallelism_follows_memory() {
        assert_eq!(default_parallel(Some(100 * 1024)), 1);
        assert_eq!(default_parallel(Some(1024 * 1024)), 6);
        assert_eq!(default_parallel(Some(64 * 1024 * 1024)), 16);
    }
}
