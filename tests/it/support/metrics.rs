//! Reading the Prometheus text format the admin endpoint serves.

/// A series name, its labels and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape.
pub struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

impl Metrics {
    /// Parse the text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
            };
            samples.push((name, labels, value));
        }
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// The value of the series `name` whose labels include all of `labels`; `None` when there
    /// is none. Panics when more than one series matches: the test asked an ambiguous question.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series",
            found.len()
        );
        found.first().copied()
    }

    /// Whether a series of this name exists with these labels (one or more).
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.any(name, labels)
    }

    /// The sum of every series `name` whose labels include all of `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Whether any series `name` has labels including all of `labels`.
    pub fn any(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    /// `portcullis_requests_total` of `route` (any method) with a code of `class`: `'2'`
    /// sums 2xx.
    pub fn requests_in_class(&self, route: &str, class: char) -> f64 {
        self.matching("portcullis_requests_total", &[("route", route)])
            .filter(|(l, _)| {
                l.iter()
                    .any(|(k, v)| k == "code" && v.len() == 3 && v.starts_with(class))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series `name` whose labels include all of `labels`, with its value.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, l, v)| (l.as_slice(), *v))
    }

    /// The names of every sample.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.iter().map(|(n, _, _)| n.as_str())
    }

    /// The raw text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &after[end..];
    }
    out
}
