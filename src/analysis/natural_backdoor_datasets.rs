//! Natural backdoor datasets (Wenger, Bhattacharjee, Bhagoji, Passananti, Andere, Zheng, Zhao,
//! NeurIPS 2022 Datasets and Benchmarks, "Finding naturally occurring physical backdoors in
//! image datasets"): in a multi-label dataset, an everyday object that co-occurs with many
//! classes can serve as a physical trigger. Build the object co-occurrence graph, rank
//! candidate triggers by centrality, and for each candidate choose classes that co-occur with
//! it but not with one another (a maximum independent set of the class graph), so every image
//! has one label. Images of those classes with the trigger form the poisoned subset, without
//! it the clean subset.
//!
//! Graph algorithms come from petgraph: PageRank, and maximal cliques (Bron-Kerbosch) of the
//! complement graph for the independent sets. Deviation: the paper ranks by betweenness,
//! closeness, eigenvector and degree centrality; petgraph offers degree and PageRank (an
//! eigenvector-type centrality), so those two are provided.

use crate::error::{Error, Result};
use crate::report::{Chart, Figure, Heatmap, Outcome};
use petgraph::algo::{maximal_cliques, page_rank};
use petgraph::graph::{DiGraph, UnGraph};
use polars::prelude::{DataFrame, NamedFrom, Series};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}
#[derive(Deserialize)]
struct CocoImage {
    id: u64,
}
#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
}
#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// Multi-label annotations: which categories each image contains.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabel {
    /// Category names and their ids in the source file.
    pub categories: Vec<String>,
    pub category_ids: Vec<u64>,
    /// Image ids, and per image the (sorted, distinct) category indices it contains.
    pub image_ids: Vec<u64>,
    pub labels: Vec<Vec<usize>>,
}

impl MultiLabel {
    /// Parse COCO-style annotation JSON (`images` with `id`, `annotations` with `image_id`
    /// and `category_id`, `categories` with `id` and `name`; other fields are ignored).
    ///
    /// ```
    /// use transferlab::analysis::natural_backdoor_datasets::MultiLabel;
    /// let json = r#"{"images": [{"id": 1}, {"id": 2}],
    ///   "annotations": [{"image_id": 1, "category_id": 7}, {"image_id": 1, "category_id": 9}],
    ///   "categories": [{"id": 7, "name": "cup"}, {"id": 9, "name": "book"}]}"#;
    /// let m = MultiLabel::from_coco_json(json)?;
    /// assert_eq!(m.labels, vec![vec![0, 1], vec![]]);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn from_coco_json(json: &str) -> Result<Self> {
        Self::parse(json, Path::new("<string>"))
    }

    /// Read a COCO-style annotation file (e.g. `instances_train2017.json`).
    pub fn read_coco(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        Self::parse(&text, path)
    }

    fn parse(json: &str, path: &Path) -> Result<Self> {
        let f: CocoFile = serde_json::from_str(json).map_err(|e| Error::format(path, "COCO annotation JSON", e.to_string()))?;
        let cat_index: HashMap<u64, usize> = f.categories.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        let img_index: HashMap<u64, usize> = f.images.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        let mut labels = vec![Vec::new(); f.images.len()];
        for a in &f.annotations {
            let c = *cat_index
                .get(&a.category_id)
                .ok_or_else(|| Error::format(path, "COCO annotation JSON", format!("annotation refers to unknown category_id {}", a.category_id)))?;
            let i = *img_index
                .get(&a.image_id)
                .ok_or_else(|| Error::format(path, "COCO annotation JSON", format!("annotation refers to unknown image_id {}", a.image_id)))?;
            labels[i].push(c);
        }
        for l in &mut labels {
            l.sort_unstable();
            l.dedup();
        }
        Ok(Self {
            categories: f.categories.iter().map(|c| c.name.clone()).collect(),
            category_ids: f.categories.iter().map(|c| c.id).collect(),
            image_ids: f.images.iter().map(|m| m.id).collect(),
            labels,
        })
    }

    /// Images containing each category.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.categories.len()];
        for l in &self.labels {
            for &k in l {
                c[k] += 1;
            }
        }
        c
    }

    /// The symmetric co-occurrence matrix (row-major, categories x categories): images that
    /// contain both; the diagonal holds each category's image count.
    pub fn cooccurrence(&self) -> Vec<usize> {
        let k = self.categories.len();
        let mut m = vec![0; k * k];
        for l in &self.labels {
            for &a in l {
                for &b in l {
                    m[a * k + b] += 1;
                }
            }
        }
        m
    }
}

/// How candidate triggers are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Centrality {
    /// Number of categories co-occurring at least `min_cooccurrence` times.
    Degree,
    /// PageRank (damping 0.85) of the thresholded co-occurrence graph.
    PageRank,
}

/// Configuration of [`run`]. Defaults: an edge where two categories share at least 10
/// images; the 5 most central categories evaluated as triggers; every selected class needs at
/// least 10 clean and 10 poisoned images; degree centrality (the paper's simplest measure).
/// The independent-set search (Bron-Kerbosch, exponential in the worst case) is refused over
/// more than `max_candidates` classes.
#[derive(Debug, Clone)]
pub struct NaturalBackdoorConfig {
    pub centrality: Centrality,
    pub min_cooccurrence: usize,
    pub triggers: usize,
    pub min_images: usize,
    pub max_candidates: usize,
}

impl Default for NaturalBackdoorConfig {
    fn default() -> Self {
        Self { centrality: Centrality::Degree, min_cooccurrence: 10, triggers: 5, min_images: 10, max_candidates: 60 }
    }
}

/// One candidate trigger and the dataset it yields.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerDataset {
    /// The trigger category and its centrality score.
    pub trigger: usize,
    pub centrality: f64,
    /// The selected classes (an independent set of the class graph).
    pub classes: Vec<usize>,
    /// (image index, class position in `classes`) of the clean and the poisoned subsets.
    pub clean: Vec<(usize, usize)>,
    pub poisoned: Vec<(usize, usize)>,
}

/// What [`run`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct NaturalBackdoorResult {
    pub annotations: MultiLabel,
    /// Centrality of every category.
    pub centrality: Vec<f64>,
    /// The evaluated triggers, most central first.
    pub datasets: Vec<TriggerDataset>,
}

/// Build the co-occurrence graph, rank triggers and select class sets and subsets.
pub fn run(annotations: &MultiLabel, cfg: &NaturalBackdoorConfig) -> Result<NaturalBackdoorResult> {
    let k = annotations.categories.len();
    if k < 3 {
        return Err(Error::invalid("annotations", format!("{k} categories; a trigger and two classes need at least 3")));
    }
    if cfg.triggers == 0 || cfg.min_cooccurrence == 0 {
        return Err(Error::invalid("natural backdoor config", "triggers and min_cooccurrence must be at least 1"));
    }
    let co = annotations.cooccurrence();
    let edge = |a: usize, b: usize| a != b && co[a * k + b] >= cfg.min_cooccurrence;
    let mut graph = UnGraph::<usize, usize>::new_undirected();
    let nodes: Vec<_> = (0..k).map(|c| graph.add_node(c)).collect();
    for a in 0..k {
        for b in a + 1..k {
            if edge(a, b) {
                graph.add_edge(nodes[a], nodes[b], co[a * k + b]);
            }
        }
    }
    let centrality: Vec<f64> = match cfg.centrality {
        Centrality::Degree => nodes.iter().map(|&n| graph.neighbors(n).count() as f64).collect(),
        Centrality::PageRank => {
            // petgraph's PageRank follows directed edges: both directions of each.
            let mut di = DiGraph::<(), ()>::new();
            let dn: Vec<_> = (0..k).map(|_| di.add_node(())).collect();
            for e in graph.edge_indices() {
                let (a, b) = graph.edge_endpoints(e).expect("edge exists");
                di.add_edge(dn[a.index()], dn[b.index()], ());
                di.add_edge(dn[b.index()], dn[a.index()], ());
            }
            page_rank(&di, 0.85f64, 50)
        }
    };
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| centrality[b].total_cmp(&centrality[a]).then(a.cmp(&b)));

    let mut datasets = Vec::new();
    for &t in order.iter().take(cfg.triggers) {
        let has = |i: usize, c: usize| annotations.labels[i].binary_search(&c).is_ok();
        // Candidate classes: co-occur with the trigger often enough, and appear without it.
        let cands: Vec<usize> = (0..k)
            .filter(|&c| c != t && co[t * k + c] >= cfg.min_images.max(cfg.min_cooccurrence) && co[c * k + c] - co[t * k + c] >= cfg.min_images)
            .collect();
        if cands.len() > cfg.max_candidates {
            return Err(Error::invalid(
                "independent-set search",
                format!("{} candidate classes for trigger {:?} exceed max_candidates {}; raise min_cooccurrence or min_images", cands.len(), annotations.categories[t], cfg.max_candidates),
            ));
        }
        let classes = if cands.is_empty() { Vec::new() } else { max_independent_set(&cands, &co, k, cfg.min_cooccurrence) };
        let mut clean = Vec::new();
        let mut poisoned = Vec::new();
        for i in 0..annotations.labels.len() {
            let present: Vec<usize> = (0..classes.len()).filter(|&j| has(i, classes[j])).collect();
            // Images with two selected classes would have two labels: left out.
            if present.len() == 1 {
                if has(i, t) {
                    poisoned.push((i, present[0]));
                } else {
                    clean.push((i, present[0]));
                }
            }
        }
        datasets.push(TriggerDataset { trigger: t, centrality: centrality[t], classes, clean, poisoned });
    }
    Ok(NaturalBackdoorResult { annotations: annotations.clone(), centrality, datasets })
}

/// The largest set of `cands` no two of which co-occur `min_co` times or more: the largest
/// maximal clique of the complement graph (ties: the set with more images).
fn max_independent_set(cands: &[usize], co: &[usize], k: usize, min_co: usize) -> Vec<usize> {
    let mut comp = UnGraph::<usize, ()>::new_undirected();
    let nodes: Vec<_> = cands.iter().map(|&c| comp.add_node(c)).collect();
    for a in 0..cands.len() {
        for b in a + 1..cands.len() {
            if co[cands[a] * k + cands[b]] < min_co {
                comp.add_edge(nodes[a], nodes[b], ());
            }
        }
    }
    let mut best: Vec<usize> = Vec::new();
    let mut best_images = 0;
    for clique in maximal_cliques(&comp) {
        let mut set: Vec<usize> = clique.iter().map(|n| comp[*n]).collect();
        set.sort_unstable();
        let images: usize = set.iter().map(|&c| co[c * k + c]).sum();
        if set.len() > best.len() || (set.len() == best.len() && (images > best_images || (images == best_images && set < best))) {
            best_images = images;
            best = set;
        }
    }
    best
}

/// COCO-style annotation JSON with known structure, for tests and the notebook: `images`
/// images, each with one of 12 object classes, a second class with probability 0.15 drawn
/// from a fixed partner (dog-cat, car-bus, pizza-cake, ...: the edges that stop those pairs
/// being selected together), "person" in half of all images, "sunglasses" in 15 %, and "cup"
/// in 40 % of food images only. Seeded.
pub fn synthetic_coco_json(images: usize, seed: u64) -> String {
    use rand::Rng;
    let classes = ["dog", "cat", "horse", "car", "bus", "boat", "bird", "kite", "pizza", "cake", "clock", "bench"];
    let partner = [1usize, 0, 0, 4, 3, 5, 7, 6, 9, 8, 10, 11];
    let hubs = ["person", "sunglasses", "cup"];
    let mut r = crate::rng::stream(seed, "analysis/natural_backdoor/synthetic");
    let mut anns = Vec::new();
    for i in 0..images {
        let c = r.random_range(0..classes.len());
        let mut present = vec![c];
        if r.random::<f64>() < 0.15 && partner[c] != c {
            present.push(partner[c]);
        }
        if r.random::<f64>() < 0.5 {
            present.push(classes.len());
        }
        if r.random::<f64>() < 0.15 {
            present.push(classes.len() + 1);
        }
        if (c == 8 || c == 9) && r.random::<f64>() < 0.4 {
            present.push(classes.len() + 2);
        }
        for p in present {
            anns.push(serde_json::json!({"id": anns.len() + 1, "image_id": i + 1, "category_id": p + 1, "bbox": [0, 0, 1, 1], "iscrowd": 0}));
        }
    }
    let cats: Vec<_> = classes.iter().chain(hubs.iter()).enumerate().map(|(i, n)| serde_json::json!({"id": i + 1, "name": n})).collect();
    let imgs: Vec<_> = (0..images).map(|i| serde_json::json!({"id": i + 1, "file_name": format!("{:012}.jpg", i + 1)})).collect();
    serde_json::json!({"images": imgs, "annotations": anns, "categories": cats}).to_string()
}

impl NaturalBackdoorResult {
    /// The clean (`poisoned == false`) or poisoned subset of the `rank`-th trigger's dataset:
    /// columns image_id, class_index (position among the selected classes), class.
    pub fn subset(&self, rank: usize, poisoned: bool) -> Result<DataFrame> {
        let d = self
            .datasets
            .get(rank)
            .ok_or_else(|| Error::invalid("trigger rank", format!("{rank}; only {} triggers were evaluated", self.datasets.len())))?;
        let rows = if poisoned { &d.poisoned } else { &d.clean };
        let a = &self.annotations;
        let cols = vec![
            Series::new("image_id".into(), rows.iter().map(|&(i, _)| a.image_ids[i]).collect::<Vec<_>>()).into(),
            Series::new("class_index".into(), rows.iter().map(|&(_, j)| j as u32).collect::<Vec<_>>()).into(),
            Series::new("class".into(), rows.iter().map(|&(_, j)| a.categories[d.classes[j]].as_str()).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }
}

impl Outcome for NaturalBackdoorResult {
    /// One row per evaluated trigger: trigger, centrality, n_classes, classes, clean, poisoned.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let d = &self.datasets;
        let names = &self.annotations.categories;
        let cols = vec![
            Series::new("trigger".into(), d.iter().map(|r| names[r.trigger].as_str()).collect::<Vec<_>>()).into(),
            Series::new("centrality".into(), d.iter().map(|r| r.centrality).collect::<Vec<_>>()).into(),
            Series::new("n_classes".into(), d.iter().map(|r| r.classes.len() as u32).collect::<Vec<_>>()).into(),
            Series::new("classes".into(), d.iter().map(|r| r.classes.iter().map(|&c| names[c].as_str()).collect::<Vec<_>>().join(", ")).collect::<Vec<_>>()).into(),
            Series::new("clean".into(), d.iter().map(|r| r.clean.len() as u64).collect::<Vec<_>>()).into(),
            Series::new("poisoned".into(), d.iter().map(|r| r.poisoned.len() as u64).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// The co-occurrence counts (log scale) of the 15 most central categories.
    fn figure(&self) -> Result<Figure> {
        let k = self.annotations.categories.len();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| self.centrality[b].total_cmp(&self.centrality[a]).then(a.cmp(&b)));
        order.truncate(15);
        let co = self.annotations.cooccurrence();
        let names: Vec<String> = order.iter().map(|&c| self.annotations.categories[c].clone()).collect();
        let mut values = Vec::with_capacity(order.len() * order.len());
        for &a in &order {
            for &b in &order {
                values.push((1.0 + co[a * k + b] as f64).log10());
            }
        }
        let chart = Heatmap::new("Co-occurrence (log10 images) of the most central categories", names.clone(), names, values);
        Ok(Figure::new(Chart::Heatmap(chart)))
    }

    fn summary(&self) -> String {
        let names = &self.annotations.categories;
        let name = |c: usize| names.get(c).map_or("?", String::as_str);
        let setting = format!("{} categories in {} images", names.len(), self.annotations.image_ids.len());
        let Some(d) = self.datasets.first() else {
            return format!("Natural backdoor datasets: no candidate trigger yielded a dataset ({setting}).");
        };
        let usable = self.datasets.iter().filter(|d| d.classes.len() >= 2).count();
        format!(
            "Natural backdoor datasets ({setting}): the most central candidate trigger, \"{}\", yields a {}-class dataset ({}) of {} images, {:.1} % of them poisoned (trigger present); {} of {} evaluated triggers give two or more classes.",
            name(d.trigger),
            d.classes.len(),
            d.classes.iter().map(|&c| name(c)).collect::<Vec<_>>().join(", "),
            d.clean.len() + d.poisoned.len(),
            100.0 * d.poisoned.len() as f64 / (d.clean.len() + d.poisoned.len()).max(1) as f64,
            usable,
            self.datasets.len()
        )
    }
}
