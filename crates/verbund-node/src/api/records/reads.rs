//! The client API's reads: list and search in keyset pages (own callers through the store's
//! queries, foreign callers over what they reach, both projected and audited) and Watch.

use super::*;

const WATCH_BATCH: i64 = 256;
/// Fallback poll for changes committed by another process sharing the database.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Page tokens are opaque to clients: base64 of the last id and a fingerprint of the filters,
/// so a token cannot be reused with different filters.
pub(crate) fn encode_token(after_id: &str, filter_fingerprint: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{after_id}|{filter_fingerprint:016x}"))
}

pub(crate) fn decode_token(token: &str, filter_fingerprint: u64) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid(
            "page_token",
            "is not a token from a previous response with the same filters",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, fp) = text.split_once('|').ok_or_else(bad)?;
    if u64::from_str_radix(fp, 16).ok() != Some(filter_fingerprint) {
        return Err(bad());
    }
    Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some(id.to_string()))
}

/// Queries fetch `limit + 1` rows: an extra row means there is a next page, which starts after
/// the last row returned.
/// Cuts a page fetched with one item more than `limit` and gives the next page's token
/// (empty on the last page).
pub(crate) fn next_page<T>(
    items: &mut Vec<T>,
    limit: i64,
    filter_fingerprint: u64,
    record: impl Fn(&T) -> &Record,
) -> String {
    if items.len() as i64 <= limit {
        return String::new();
    }
    items.truncate(limit as usize);
    items
        .last()
        .map(|t| encode_token(&record(t).id.to_string(), filter_fingerprint))
        .unwrap_or_default()
}

/// One page of what a foreign caller reaches: in id order after `after_id`, the records
/// `keep` accepts, at most `limit`, and the next page's token.
pub(crate) fn foreign_page(
    reached: Vec<(Record, auth::RecordAccess)>,
    after_id: Option<&str>,
    limit: i64,
    filter_fingerprint: u64,
    keep: impl Fn(&Record) -> bool,
) -> (Vec<(Record, auth::RecordAccess)>, String) {
    let mut page: Vec<(Record, auth::RecordAccess)> = reached
        .into_iter()
        .filter(|(r, _)| after_id.is_none_or(|a| r.id.to_string().as_str() > a))
        .filter(|(r, _)| keep(r))
        .take(limit as usize + 1)
        .collect();
    let next = next_page(&mut page, limit, filter_fingerprint, |(r, _)| r);
    (page, next)
}

/// FNV-1a: stable across processes and releases (unlike std's hasher).
pub(crate) fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn page_size(requested: i32) -> Result<i64, Status> {
    match requested {
        n if n < 0 => Err(invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// The filters of a List call apart from paging (declared once, in core).
pub use verbund_core::write::FilterColumns as ListFilter;

pub(crate) fn opt_id(field: &str, v: &str) -> Result<Option<String>, Status> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse_id(field, v).map(|u| Some(u.to_string()))
    }
}

pub(crate) fn opt_org(field: &str, v: &str) -> Result<Option<String>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    if !verbund_core::schema::is_valid_org_id(v) {
        return Err(invalid(
            field,
            format!("{v:?} is not a valid organization id"),
        ));
    }
    Ok(Some(v.to_string()))
}

impl NodeState {
    /// Audits what a foreign caller was shown by a List, Search or Watch.
    pub(crate) async fn audit_shown(
        &self,
        p: &Principal,
        action: &str,
        shown: &[(Record, auth::RecordAccess)],
    ) -> Result<(), Status> {
        if self.is_own(p) || shown.is_empty() {
            return Ok(());
        }
        let drafts = shown
            .iter()
            .map(|(r, a)| {
                Self::audit_draft(
                    p,
                    action,
                    Some(r.kind),
                    Some(r.id.to_string()),
                    a.readable.iter().cloned().collect(),
                    "allow",
                    auth::reason_of(a),
                )
            })
            .collect();
        self.audit(drafts).await
    }

    /// What caller `p` is shown of `rec`: the fields it may read; another organization also
    /// gets no sequence number of ours and an update time of what it can read
    /// (`project_for_other_org`).
    pub(crate) fn shown(
        &self,
        p: &Principal,
        rec: &Record,
        readable: &std::collections::BTreeSet<String>,
    ) -> Record {
        if self.is_own(p) {
            project(rec, readable)
        } else {
            project_for_other_org(rec, readable)
        }
    }

    /// The records among `candidates` that an own-organization principal may see, projected.
    pub(crate) fn own_visible(
        &self,
        p: &Principal,
        candidates: Vec<Record>,
    ) -> Vec<(Record, auth::RecordAccess)> {
        let policy = self.policy();
        let mut out = Vec::with_capacity(candidates.len());
        for rec in candidates {
            let access = auth::record_access(&policy, &self.org, p, &rec, &[]);
            if access.visible() {
                out.push((project(&rec, &access.readable), access));
            }
        }
        out
    }

    /// Everything a foreign caller reaches, projected, in id order.
    pub(crate) async fn foreign_visible(
        &self,
        p: &Principal,
    ) -> Result<(Vec<(Record, auth::RecordAccess)>, auth::Reached), NodeError> {
        let policy = self.policy();
        let reached = self.reach_of(&p.org).await?;
        let mut out = Vec::new();
        for rec in reached.records.values() {
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if access.visible() {
                out.push((project_for_other_org(rec, &access.readable), access));
            }
        }
        out.sort_by_key(|(r, _)| r.id);
        Ok((out, reached))
    }

    pub async fn list<M: RecordMessage>(
        &self,
        p: &Principal,
        options: Option<pb::ListOptions>,
        filter: ListFilter,
    ) -> Result<(Vec<M>, String), NodeError> {
        let kind = M::KIND;
        let options = options.unwrap_or_default();
        let limit = page_size(options.page_size)?;
        let updated_since_ms = options
            .updated_since
            .as_ref()
            .map(|t| convert::timestamp_to_ms("options.updated_since", t))
            .transpose()?;
        let fp = fingerprint(&format!(
            "{}|{filter:?}|{updated_since_ms:?}|{}",
            kind, options.show_deleted
        ));
        let after_id = decode_token(&options.page_token, fp)?;
        if self.is_own(p) {
            let filtered = filter.set_fields();
            if let Err(why) = auth::may_list(&self.policy(), &self.org, p, kind, &filtered) {
                let fields = filtered.iter().map(|f| f.to_string()).collect();
                return Err(self.forbid(p, "list", kind, None, fields, why.0).await);
            }
            let q = ListQuery {
                kind: Some(kind),
                filter: filter.clone(),
                updated_since_ms,
                show_deleted: options.show_deleted,
                after_id,
                limit: limit + 1,
            };
            let mut records = self.store.list(&q).await?;
            let next = next_page(&mut records, limit, fp, |r| r);
            let shown = self.own_visible(p, records);
            return Ok((shown.iter().map(|(r, _)| M::from_record(r)).collect(), next));
        }
        let (all, _) = self.foreign_visible(p).await?;
        let (page, next) = foreign_page(all, after_id.as_deref(), limit, fp, |r| {
            r.kind == kind
                && updated_since_ms.is_none_or(|t| r.updated_at_ms >= t)
                && filter.matches(r)
        });
        self.audit_shown(p, "list", &page).await?;
        Ok((page.iter().map(|(r, _)| M::from_record(r)).collect(), next))
    }

    pub async fn search(
        &self,
        p: &Principal,
        req: pb::SearchRequest,
    ) -> Result<pb::SearchResponse, NodeError> {
        let needles = search_needles(&req.query)?;
        let limit = page_size(req.page_size)?;
        let mut kinds = req
            .kinds
            .iter()
            .map(|k| convert::kind_from_pb("kinds", *k))
            .collect::<Result<Vec<_>, _>>()?;
        kinds.sort();
        kinds.dedup();
        let fp = fingerprint(&format!("{needles:?}|{kinds:?}"));
        let after_id = decode_token(&req.page_token, fp)?;
        // Only what the caller may read can match: the search text of the projection.
        let hit = |r: &Record| {
            let text = verbund_core::write::search_text(r.kind, &r.fields);
            needles.iter().any(|n| text.contains(n.as_str()))
        };
        if self.is_own(p) {
            let q = SearchQuery {
                needles: needles.clone(),
                kinds,
                after_id,
                limit: limit + 1,
            };
            let mut records = self.store.search(&q).await?;
            let next_page_token = next_page(&mut records, limit, fp, |r| r);
            let shown = self.own_visible(p, records);
            return Ok(pb::SearchResponse {
                results: shown
                    .iter()
                    .filter(|(r, _)| hit(r))
                    .map(|(r, _)| convert::any_record(r))
                    .collect(),
                next_page_token,
            });
        }
        let (all, _) = self.foreign_visible(p).await?;
        let (page, next_page_token) = foreign_page(all, after_id.as_deref(), limit, fp, |r| {
            (kinds.is_empty() || kinds.contains(&r.kind)) && hit(r)
        });
        self.audit_shown(p, "search", &page).await?;
        Ok(pb::SearchResponse {
            results: page.iter().map(|(r, _)| convert::any_record(r)).collect(),
            next_page_token,
        })
    }

    /// The events of a batch of changes that `p` may see, projected.
    pub(crate) async fn visible_events(
        &self,
        p: &Principal,
        batch: &[verbund_core::Change],
    ) -> Result<Vec<pb::ChangeEvent>, NodeError> {
        let ids: Vec<Uuid> = batch.iter().map(|c| c.record_id).collect();
        let policy = self.policy();
        // Own organization: the records themselves; foreign: what it reaches.
        let reached = if self.is_own(p) {
            let recs = self.store.get_many(&ids).await?;
            auth::Reached {
                grants: Default::default(),
                records: recs.into_iter().map(|r| (r.id, r)).collect(),
            }
        } else {
            self.reach_of(&p.org).await?
        };
        let mut shown = Vec::new();
        let mut events = Vec::new();
        for c in batch {
            if matches!(
                c.op,
                verbund_core::ChangeOp::Access | verbund_core::ChangeOp::Snapshot
            ) {
                continue; // sharing bookkeeping, not a change of the record
            }
            let Some(rec) = reached.records.get(&c.record_id) else {
                continue;
            };
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if !access.visible() {
                continue;
            }
            let changed: Vec<String> = c
                .fields
                .keys()
                .filter(|f| access.readable.contains(*f))
                .cloned()
                .collect();
            if changed.is_empty() && c.op == verbund_core::ChangeOp::Update {
                continue;
            }
            let projected = self.shown(p, rec, &access.readable);
            events.push(pb::ChangeEvent {
                // Another organization gets a sealed token, so that the events it sees do
                // not count the changes it does not see.
                seq: if self.is_own(p) {
                    c.seq
                } else {
                    self.watch_tokens.seal(c.seq)
                },
                kind: convert::kind_to_pb(c.kind) as i32,
                record_id: c.record_id.to_string(),
                op: match c.op {
                    verbund_core::ChangeOp::Create => pb::ChangeOp::Create,
                    verbund_core::ChangeOp::Update => pb::ChangeOp::Update,
                    verbund_core::ChangeOp::Delete
                    | verbund_core::ChangeOp::Access
                    | verbund_core::ChangeOp::Snapshot => pb::ChangeOp::Delete,
                } as i32,
                changed_fields: changed,
                version: Some(convert::hlc_to_pb(&c.hlc)),
                change_time: Some(convert::ms_to_timestamp(c.at_ms)),
                record: Some(convert::any_record(&projected)),
            });
            shown.push((projected, access));
        }
        self.audit_shown(p, "watch", &shown).await?;
        Ok(events)
    }

    /// Streams change events after `after_seq` in order, then follows new commits. Each
    /// batch is checked against the shares and policy in force when it is sent.
    pub fn watch(
        self: &Arc<Self>,
        p: &Principal,
        req: pb::WatchRequest,
    ) -> Result<ReceiverStream<Result<pb::ChangeEvent, Status>>, Status> {
        if req.after_seq < 0 {
            return Err(invalid("after_seq", "must not be negative"));
        }
        let kinds = req
            .kinds
            .iter()
            .map(|k| convert::kind_from_pb("kinds", *k))
            .collect::<Result<Vec<_>, _>>()?;
        let last = *self.store.subscribe_commits().borrow();
        let own = self.is_own(p);
        // Another organization's positions are sealed sequence numbers (see `visible_events`).
        let after_seq = match req.after_seq {
            0 => 0,
            _ if own => req.after_seq,
            token => match self.watch_tokens.open(token) {
                Some(seq) if seq <= last => seq,
                _ => {
                    return Err(invalid(
                        "after_seq",
                        "is not the seq of an event this node sent you",
                    ));
                }
            },
        };
        if own && after_seq > last {
            // E.g. a cursor from before a restore from backup: skipping ahead would hide changes.
            return Err(Status::out_of_range(format!(
                "after_seq {} is beyond the last change {last} of this node",
                req.after_seq
            )));
        }
        // Bounded: a slow client holds back its own stream, never the node.
        let (tx, rx) = mpsc::channel(128);
        let state = self.clone();
        let principal = p.clone();
        let mut cursor = after_seq;
        let mut stopping = state.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_max_age;
        tokio::spawn(async move {
            let mut notify = state.store.subscribe_commits();
            loop {
                if *stopping.borrow() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                let batch = match state.store.changes_after(cursor, &kinds, WATCH_BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                };
                let Some(batch_end) = batch.last().map(|c| c.seq) else {
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                        _ = tx.closed() => return,
                        _ = stopping.changed() => return,
                        _ = tokio::time::sleep_until(deadline) => return,
                    }
                    continue;
                };
                let events = match state.visible_events(&principal, &batch).await {
                    Ok(ev) => ev,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                cursor = batch_end;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_filters() {
        let id = Uuid::now_v7().to_string();
        let t = encode_token(&id, 7);
        assert_eq!(decode_token(&t, 7).unwrap(), Some(id));
        assert_eq!(
            decode_token(&t, 8).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(decode_token("!!!", 7).is_err());
        assert_eq!(decode_token("", 7).unwrap(), None);
    }

    #[test]
    fn page_size_is_clamped() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
