//! Structural pre-check of request bodies before kafka-protocol decodes them.
//!
//! kafka-protocol sizes a decoded array with `Vec::with_capacity(count)`
//! straight from the wire, so a 20-byte request claiming two billion
//! elements would make the broker try to allocate hundreds of gigabytes and
//! abort. Every array element takes at least one byte on the wire, so a
//! count larger than the bytes left in the frame is malformed. This module
//! walks each request body we accept, following the Kafka message schemas
//! for the versions in `broker::supported_versions`, and rejects such counts
//! (and bodies that end early) before the real decoder runs. It is a pure
//! function of the bytes.

use kafka_protocol::messages::ApiKey;

/// Wire types of request fields.
#[derive(Clone, Copy)]
enum T {
    I8,
    I16,
    I32,
    I64,
    Bool,
    Uuid,
    /// String (nullable or not: the same bound check applies).
    Str,
    /// Bytes (nullable or not), including record sets.
    Bytes,
    /// Array of a primitive.
    Arr(&'static T),
    /// Array of structs.
    Structs(&'static [F]),
    /// Nullable array of structs (same encoding; kept for readability).
    NStructs(&'static [F]),
}

/// A field present in versions `min..=max`.
#[derive(Clone, Copy)]
struct F(T, i16, i16);

const ALL: i16 = i16::MAX;

const fn f(t: T) -> F {
    F(t, 0, ALL)
}
const fn from(t: T, min: i16) -> F {
    F(t, min, ALL)
}

// --- schemas (request bodies) -------------------------------------------------

const METADATA_TOPIC: &[F] = &[from(T::Uuid, 10), f(T::Str)];
const METADATA: &[F] = &[
    f(T::NStructs(METADATA_TOPIC)),
    from(T::Bool, 4),
    F(T::Bool, 8, 10),
    from(T::Bool, 8),
];

const PRODUCE_PARTITION: &[F] = &[f(T::I32), f(T::Bytes)];
const PRODUCE_TOPIC: &[F] = &[f(T::Str), f(T::Structs(PRODUCE_PARTITION))];
const PRODUCE: &[F] = &[
    from(T::Str, 3),
    f(T::I16),
    f(T::I32),
    f(T::Structs(PRODUCE_TOPIC)),
];

const FETCH_PARTITION: &[F] = &[
    f(T::I32),
    from(T::I32, 9),
    f(T::I64),
    from(T::I32, 12),
    from(T::I64, 5),
    f(T::I32),
];
const FETCH_TOPIC: &[F] = &[
    F(T::Str, 0, 12),
    from(T::Uuid, 13),
    f(T::Structs(FETCH_PARTITION)),
];
const FORGOTTEN: &[F] = &[F(T::Str, 0, 12), from(T::Uuid, 13), f(T::Arr(&T::I32))];
const FETCH: &[F] = &[
    F(T::I32, 0, 14),
    f(T::I32),
    f(T::I32),
    from(T::I32, 3),
    from(T::I8, 4),
    from(T::I32, 7),
    from(T::I32, 7),
    f(T::Structs(FETCH_TOPIC)),
    from(T::Structs(FORGOTTEN), 7),
    from(T::Str, 11),
];

const LIST_OFFSETS_PARTITION: &[F] = &[f(T::I32), from(T::I32, 4), f(T::I64), F(T::I32, 0, 0)];
const LIST_OFFSETS_TOPIC: &[F] = &[f(T::Str), f(T::Structs(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[F] = &[
    f(T::I32),
    from(T::I8, 2),
    f(T::Structs(LIST_OFFSETS_TOPIC)),
    from(T::I32, 10),
];

const CREATE_ASSIGNMENT: &[F] = &[f(T::I32), f(T::Arr(&T::I32))];
const CREATE_CONFIG: &[F] = &[f(T::Str), f(T::Str)];
const CREATE_TOPIC: &[F] = &[
    f(T::Str),
    f(T::I32),
    f(T::I16),
    f(T::Structs(CREATE_ASSIGNMENT)),
    f(T::Structs(CREATE_CONFIG)),
];
const CREATE_TOPICS: &[F] = &[f(T::Structs(CREATE_TOPIC)), f(T::I32), from(T::Bool, 1)];

const DELETE_TOPIC_STATE: &[F] = &[f(T::Str), f(T::Uuid)];
const DELETE_TOPICS: &[F] = &[
    F(T::Arr(&T::Str), 0, 5),
    from(T::Structs(DELETE_TOPIC_STATE), 6),
    f(T::I32),
];

const DESCRIBE_CONFIGS_RESOURCE: &[F] = &[f(T::I8), f(T::Str), f(T::Arr(&T::Str))];
const DESCRIBE_CONFIGS: &[F] = &[
    f(T::Structs(DESCRIBE_CONFIGS_RESOURCE)),
    from(T::Bool, 1),
    from(T::Bool, 3),
];

const FIND_COORDINATOR: &[F] = &[F(T::Str, 0, 3), from(T::I8, 1), from(T::Arr(&T::Str), 4)];

const INIT_PRODUCER_ID: &[F] = &[
    f(T::Str),
    f(T::I32),
    from(T::I64, 3),
    from(T::I16, 3),
    from(T::Bool, 6),
];

const JOIN_PROTOCOL: &[F] = &[f(T::Str), f(T::Bytes)];
const JOIN_GROUP: &[F] = &[
    f(T::Str),
    f(T::I32),
    from(T::I32, 1),
    f(T::Str),
    from(T::Str, 5),
    f(T::Str),
    f(T::Structs(JOIN_PROTOCOL)),
    from(T::Str, 8),
];

const SYNC_ASSIGNMENT: &[F] = &[f(T::Str), f(T::Bytes)];
const SYNC_GROUP: &[F] = &[
    f(T::Str),
    f(T::I32),
    f(T::Str),
    from(T::Str, 3),
    from(T::Str, 5),
    from(T::Str, 5),
    f(T::Structs(SYNC_ASSIGNMENT)),
];

const HEARTBEAT: &[F] = &[f(T::Str), f(T::I32), f(T::Str), from(T::Str, 3)];

const LEAVE_MEMBER: &[F] = &[f(T::Str), f(T::Str), from(T::Str, 5)];
const LEAVE_GROUP: &[F] = &[
    f(T::Str),
    F(T::Str, 0, 2),
    from(T::Structs(LEAVE_MEMBER), 3),
];

const COMMIT_PARTITION: &[F] = &[
    f(T::I32),
    f(T::I64),
    from(T::I32, 6),
    F(T::I64, 1, 1),
    f(T::Str),
];
const COMMIT_TOPIC: &[F] = &[
    F(T::Str, 0, 9),
    from(T::Uuid, 10),
    f(T::Structs(COMMIT_PARTITION)),
];
const OFFSET_COMMIT: &[F] = &[
    f(T::Str),
    from(T::I32, 1),
    from(T::Str, 1),
    from(T::Str, 7),
    F(T::I64, 2, 4),
    f(T::Structs(COMMIT_TOPIC)),
];

const FETCH_OFFSETS_TOPIC: &[F] = &[f(T::Str), f(T::Arr(&T::I32))];
const FETCH_OFFSETS_GROUP_TOPIC: &[F] = &[F(T::Str, 0, 9), from(T::Uuid, 10), f(T::Arr(&T::I32))];
const FETCH_OFFSETS_GROUP: &[F] = &[
    f(T::Str),
    from(T::Str, 9),
    from(T::I32, 9),
    f(T::NStructs(FETCH_OFFSETS_GROUP_TOPIC)),
];
const OFFSET_FETCH: &[F] = &[
    F(T::Str, 0, 7),
    F(T::NStructs(FETCH_OFFSETS_TOPIC), 0, 7),
    from(T::Structs(FETCH_OFFSETS_GROUP), 8),
    from(T::Bool, 7),
];

const LIST_GROUPS: &[F] = &[from(T::Arr(&T::Str), 4), from(T::Arr(&T::Str), 5)];
const DESCRIBE_GROUPS: &[F] = &[f(T::Arr(&T::Str)), from(T::Bool, 3)];
const DESCRIBABLE_LOG_DIR_TOPIC: &[F] = &[f(T::Str), f(T::Arr(&T::I32))];
const DESCRIBE_LOG_DIRS: &[F] = &[f(T::NStructs(DESCRIBABLE_LOG_DIR_TOPIC))];
const DELETE_GROUPS: &[F] = &[f(T::Arr(&T::Str))];
const API_VERSIONS: &[F] = &[from(T::Str, 3), from(T::Str, 3)];

/// Schema and first flexible version of each request we accept.
fn schema(api: ApiKey) -> Option<(&'static [F], i16)> {
    Some(match api {
        ApiKey::Produce => (PRODUCE, 9),
        ApiKey::Fetch => (FETCH, 12),
        ApiKey::ListOffsets => (LIST_OFFSETS, 6),
        ApiKey::Metadata => (METADATA, 9),
        ApiKey::ApiVersions => (API_VERSIONS, 3),
        ApiKey::CreateTopics => (CREATE_TOPICS, 5),
        ApiKey::DeleteTopics => (DELETE_TOPICS, 4),
        ApiKey::DescribeConfigs => (DESCRIBE_CONFIGS, 4),
        ApiKey::FindCoordinator => (FIND_COORDINATOR, 3),
        ApiKey::InitProducerId => (INIT_PRODUCER_ID, 2),
        ApiKey::JoinGroup => (JOIN_GROUP, 6),
        ApiKey::SyncGroup => (SYNC_GROUP, 4),
        ApiKey::Heartbeat => (HEARTBEAT, 4),
        ApiKey::LeaveGroup => (LEAVE_GROUP, 4),
        ApiKey::OffsetCommit => (OFFSET_COMMIT, 8),
        ApiKey::OffsetFetch => (OFFSET_FETCH, 6),
        ApiKey::ListGroups => (LIST_GROUPS, 3),
        ApiKey::DescribeGroups => (DESCRIBE_GROUPS, 5),
        ApiKey::DeleteGroups => (DELETE_GROUPS, 2),
        ApiKey::DescribeLogDirs => (DESCRIBE_LOG_DIRS, 2),
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

type R<T> = Result<T, String>;

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn skip(&mut self, n: usize, what: &str) -> R<()> {
        if n > self.left() {
            return Err(format!("{what} needs {n} bytes, {} left", self.left()));
        }
        self.at += n;
        Ok(())
    }
    fn i16(&mut self) -> R<i16> {
        let s = self.b.get(self.at..self.at + 2).ok_or("truncated int16")?;
        self.at += 2;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }
    fn i32(&mut self) -> R<i32> {
        let s = self.b.get(self.at..self.at + 4).ok_or("truncated int32")?;
        self.at += 4;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn uvarint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = *self.b.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 5 bytes".into())
    }
    /// Length of a string/bytes/array: -1 (null) or a count.
    fn len(&mut self, flexible: bool, wide: bool) -> R<i64> {
        if flexible {
            Ok(self.uvarint()? as i64 - 1)
        } else if wide {
            Ok(i64::from(self.i32()?))
        } else {
            Ok(i64::from(self.i16()?))
        }
    }
    fn tagged_fields(&mut self) -> R<()> {
        let n = self.uvarint()?;
        if n as usize > self.left() {
            return Err(format!("{n} tagged fields but {} bytes left", self.left()));
        }
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.skip(size, "tagged field")?;
        }
        Ok(())
    }
}

fn count(c: &mut Cursor, flexible: bool) -> R<usize> {
    let n = c.len(flexible, true)?;
    if n < -1 {
        return Err(format!("negative array length {n}"));
    }
    let n = n.max(0) as usize;
    if n > c.left() {
        return Err(format!(
            "array of {n} elements in {} remaining bytes",
            c.left()
        ));
    }
    Ok(n)
}

fn value(c: &mut Cursor, t: T, version: i16, flexible: bool) -> R<()> {
    match t {
        T::I8 | T::Bool => c.skip(1, "int8"),
        T::I16 => c.skip(2, "int16"),
        T::I32 => c.skip(4, "int32"),
        T::I64 => c.skip(8, "int64"),
        T::Uuid => c.skip(16, "uuid"),
        T::Str => {
            let n = c.len(flexible, false)?;
            if n < -1 {
                return Err(format!("negative string length {n}"));
            }
            c.skip(n.max(0) as usize, "string")
        }
        T::Bytes => {
            let n = c.len(flexible, true)?;
            if n < -1 {
                return Err(format!("negative bytes length {n}"));
            }
            c.skip(n.max(0) as usize, "bytes")
        }
        T::Arr(inner) => {
            for _ in 0..count(c, flexible)? {
                value(c, *inner, version, flexible)?;
            }
            Ok(())
        }
        T::Structs(fields) | T::NStructs(fields) => {
            for _ in 0..count(c, flexible)? {
                fields_of(c, fields, version, flexible)?;
            }
            Ok(())
        }
    }
}

fn fields_of(c: &mut Cursor, fields: &[F], version: i16, flexible: bool) -> R<()> {
    for &F(t, min, max) in fields {
        if version >= min && version <= max {
            value(c, t, version, flexible)?;
        }
    }
    if flexible {
        c.tagged_fields()?;
    }
    Ok(())
}

/// Checks the body (after the request header) of a request. Returns the
/// number of bytes the schema accounts for. APIs without a schema pass.
pub fn check_body(api: ApiKey, version: i16, body: &[u8]) -> Result<usize, String> {
    let Some((fields, flexible_from)) = schema(api) else {
        return Ok(body.len());
    };
    let mut c = Cursor { b: body, at: 0 };
    fields_of(&mut c, fields, version, version >= flexible_from)?;
    Ok(c.at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    fn s(x: &str) -> StrBytes {
        StrBytes::from_string(x.to_string())
    }

    /// One populated request per API (every array non-empty), encodable in
    /// every version the broker supports.
    fn samples(v: i16) -> Vec<(ApiKey, RequestKind)> {
        let mut out = Vec::new();
        let mut meta = MetadataRequest::default();
        let mut mt = metadata_request::MetadataRequestTopic::default();
        mt.name = Some(s("t").into());
        meta.topics = Some(vec![mt]);
        out.push((ApiKey::Metadata, RequestKind::Metadata(meta)));

        let mut prod = ProduceRequest::default();
        let mut pt = produce_request::TopicProduceData::default();
        pt.name = s("t").into();
        let mut pp = produce_request::PartitionProduceData::default();
        pp.records = Some(Bytes::from_static(b"0123456789"));
        pt.partition_data = vec![pp.clone(), pp];
        prod.topic_data = vec![pt];
        out.push((ApiKey::Produce, RequestKind::Produce(prod)));

        let mut fetch = FetchRequest::default();
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = s("t").into();
        ft.partitions = vec![fetch_request::FetchPartition::default()];
        fetch.topics = vec![ft];
        if v >= 7 {
            let mut fg = fetch_request::ForgottenTopic::default();
            fg.topic = s("x").into();
            fg.partitions = vec![1, 2];
            fetch.forgotten_topics_data = vec![fg];
        }
        out.push((ApiKey::Fetch, RequestKind::Fetch(fetch)));

        let mut lo = ListOffsetsRequest::default();
        let mut lt = list_offsets_request::ListOffsetsTopic::default();
        lt.name = s("t").into();
        lt.partitions = vec![list_offsets_request::ListOffsetsPartition::default()];
        lo.topics = vec![lt];
        out.push((ApiKey::ListOffsets, RequestKind::ListOffsets(lo)));

        let mut ct = CreateTopicsRequest::default();
        let mut c = create_topics_request::CreatableTopic::default();
        c.name = s("t").into();
        let mut a = create_topics_request::CreatableReplicaAssignment::default();
        a.broker_ids = vec![0.into()];
        c.assignments = vec![a];
        let mut cc = create_topics_request::CreatableTopicConfig::default();
        cc.name = s("retention.ms");
        cc.value = Some(s("1"));
        c.configs = vec![cc];
        ct.topics = vec![c];
        out.push((ApiKey::CreateTopics, RequestKind::CreateTopics(ct)));

        let mut dt = DeleteTopicsRequest::default();
        if v >= 6 {
            let mut st = delete_topics_request::DeleteTopicState::default();
            st.name = Some(s("t").into());
            dt.topics = vec![st];
        } else {
            dt.topic_names = vec![s("t").into()];
        }
        out.push((ApiKey::DeleteTopics, RequestKind::DeleteTopics(dt)));

        let mut dc = DescribeConfigsRequest::default();
        let mut r = describe_configs_request::DescribeConfigsResource::default();
        r.resource_name = s("t");
        r.configuration_keys = Some(vec![s("a")]);
        dc.resources = vec![r];
        out.push((ApiKey::DescribeConfigs, RequestKind::DescribeConfigs(dc)));

        let mut fc = FindCoordinatorRequest::default();
        if v >= 4 {
            fc.coordinator_keys = vec![s("g")];
        } else {
            fc.key = s("g");
        }
        out.push((ApiKey::FindCoordinator, RequestKind::FindCoordinator(fc)));
        out.push((
            ApiKey::InitProducerId,
            RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ));

        let mut jg = JoinGroupRequest::default();
        jg.group_id = s("g").into();
        let mut jp = join_group_request::JoinGroupRequestProtocol::default();
        jp.name = s("range");
        jp.metadata = Bytes::from_static(b"meta");
        jg.protocols = vec![jp];
        out.push((ApiKey::JoinGroup, RequestKind::JoinGroup(jg)));

        let mut sg = SyncGroupRequest::default();
        let mut sa = sync_group_request::SyncGroupRequestAssignment::default();
        sa.member_id = s("m");
        sa.assignment = Bytes::from_static(b"x");
        sg.assignments = vec![sa];
        out.push((ApiKey::SyncGroup, RequestKind::SyncGroup(sg)));
        out.push((
            ApiKey::Heartbeat,
            RequestKind::Heartbeat(HeartbeatRequest::default()),
        ));

        let mut lg = LeaveGroupRequest::default();
        if v >= 3 {
            let mut m = leave_group_request::MemberIdentity::default();
            m.member_id = s("m");
            lg.members = vec![m];
        }
        out.push((ApiKey::LeaveGroup, RequestKind::LeaveGroup(lg)));

        let mut oc = OffsetCommitRequest::default();
        let mut ot = offset_commit_request::OffsetCommitRequestTopic::default();
        ot.name = s("t").into();
        ot.partitions = vec![offset_commit_request::OffsetCommitRequestPartition::default()];
        oc.topics = vec![ot];
        out.push((ApiKey::OffsetCommit, RequestKind::OffsetCommit(oc)));

        let mut of = OffsetFetchRequest::default();
        if v >= 8 {
            let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
            g.group_id = s("g").into();
            let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
            t.name = s("t").into();
            t.partition_indexes = vec![0, 1];
            g.topics = Some(vec![t]);
            of.groups = vec![g];
        } else {
            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = s("t").into();
            t.partition_indexes = vec![0];
            of.topics = Some(vec![t]);
        }
        out.push((ApiKey::OffsetFetch, RequestKind::OffsetFetch(of)));

        let mut lgr = ListGroupsRequest::default();
        if v >= 4 {
            lgr.states_filter = vec![s("Stable")];
        }
        if v >= 5 {
            lgr.types_filter = vec![s("classic")];
        }
        out.push((ApiKey::ListGroups, RequestKind::ListGroups(lgr)));
        let mut dg = DescribeGroupsRequest::default();
        dg.groups = vec![s("g").into()];
        out.push((ApiKey::DescribeGroups, RequestKind::DescribeGroups(dg)));
        let mut dlg = DeleteGroupsRequest::default();
        dlg.groups_names = vec![s("g").into()];
        out.push((ApiKey::DeleteGroups, RequestKind::DeleteGroups(dlg)));
        out.push((
            ApiKey::ApiVersions,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ));
        out
    }

    #[test]
    fn schemas_match_kafka_protocol_for_every_supported_version() {
        let mut checked = 0;
        for v in 0..=12i16 {
            for (api, req) in samples(v) {
                let Some((min, max)) = crate::broker::supported_versions(api) else {
                    continue;
                };
                if v < min || v > max {
                    continue;
                }
                let mut buf = BytesMut::new();
                if req.encode(&mut buf, v).is_err() {
                    continue; // a field this sample sets does not exist in v
                }
                let used = check_body(api, v, &buf).unwrap_or_else(|e| panic!("{api:?} v{v}: {e}"));
                assert_eq!(
                    used,
                    buf.len(),
                    "{api:?} v{v} schema does not cover the body"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn huge_array_counts_are_rejected_before_decoding() {
        // Metadata v1: topics array claiming i32::MAX elements.
        let body = i32::MAX.to_be_bytes();
        let e = check_body(ApiKey::Metadata, 1, &body).unwrap_err();
        assert!(e.contains("array"), "{e}");
        // Produce v9 (flexible): nested partition array with a huge varint count.
        let mut b = vec![0u8]; // transactional id: null
        b.extend(1i16.to_be_bytes());
        b.extend(1000i32.to_be_bytes());
        b.push(2); // one topic
        b.push(2);
        b.push(b't');
        b.extend([0xff, 0xff, 0xff, 0xff, 0x07]); // partitions: 2^31
        assert!(check_body(ApiKey::Produce, 9, &b).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bodies_never_panic(api in 0i16..40, v in 0i16..13, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(api) = ApiKey::try_from(api) {
                let _ = check_body(api, v, &body);
            }
        }
    }
}
