//! Unit tests of the pure parts: building, parsing and rule bodies.

use ipnetwork::IpNetwork;

use super::build::*;
use super::parse::*;
use super::rules::*;
use super::wire::*;
use super::*;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn attr_is_padded_and_len_is_unpadded() {
    let mut b = Vec::new();
    put_attr(&mut b, 7, b"abcde");
    assert_eq!(b.len(), 12);
    assert_eq!(ne_u16(&b), 9);
    assert_eq!(ne_u16(&b[2..]), 7);
    assert_eq!(&b[4..9], b"abcde");
    assert_eq!(&b[9..], &[0, 0, 0]);

    let mut b = Vec::new();
    put_strz(&mut b, 1, "dbgb");
    // nft's own bytes for NFTA_TABLE_NAME "dbgb"
    assert_eq!(b, [9, 0, 1, 0, b'd', b'b', b'g', b'b', 0, 0, 0, 0]);

    let mut b = Vec::new();
    put_strz(&mut b, 1, "abc");
    assert_eq!(b.len(), 8);
    assert_eq!(ne_u16(&b), 8);
}

#[test]
fn nest_len_covers_children_and_sets_flag() {
    let mut b = vec![0xaa; 4]; // unrelated prefix
    let n = nest_start(&mut b, NFTA_CHAIN_HOOK);
    put_be32(&mut b, NFTA_HOOK_HOOKNUM, 0);
    put_be32(&mut b, NFTA_HOOK_PRIORITY, (-300i32) as u32);
    nest_end(&mut b, n);
    assert_eq!(ne_u16(&b[4..]), 20);
    assert_eq!(ne_u16(&b[6..]), NFTA_CHAIN_HOOK | NLA_F_NESTED);
    // priority -300 big-endian, as nft sends it
    assert_eq!(&b[b.len() - 4..], &[0xff, 0xff, 0xfe, 0xd4]);
    let attrs = parse_attrs(&b[4..]);
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs[0].0, NFTA_CHAIN_HOOK);
    assert_eq!(parse_attrs(attrs[0].1).len(), 2);
}

#[test]
fn batch_framing() {
    let mut batch = Batch::with_seq(100);
    batch.new_table(Family::Inet, "t").unwrap();
    batch.new_base_chain(Family::Inet, "t", "c", "nat", NF_INET_POST_ROUTING, 100).unwrap();
    batch.flush_chain(Family::Inet, "t", "c").unwrap();
    batch.new_rule(Family::Inet, "t", "c", &masquerade_exprs(net("10.0.0.0/8")), Some("hi")).unwrap();
    let (bytes, begin, ops) = batch.finish();
    assert_eq!(begin, 100);
    assert_eq!(ops.iter().map(|o| o.0).collect::<Vec<_>>(), [101, 102, 103, 104]);
    assert_eq!(ops[1].1, "add chain c in table inet t");

    let msgs = parse_msgs(&bytes).unwrap();
    let total: usize = msgs.iter().map(|m| align4(m.payload.len() + NLMSG_HDRLEN)).sum();
    assert_eq!(total, bytes.len());
    assert_eq!(msgs.len(), 6);

    let (first, last) = (msgs[0], msgs[5]);
    assert_eq!((first.ty, first.seq, first.flags), (0x10, 100, NLM_F_REQUEST));
    assert_eq!(first.payload, [0, 0, 0, 10]); // AF_UNSPEC, v0, res_id be16 10
    assert_eq!((last.ty, last.seq), (0x11, 105));
    assert_eq!(last.payload, [0, 0, 0, 10]);

    let types: Vec<u16> = msgs[1..5].iter().map(|m| m.ty).collect();
    assert_eq!(types, [0x0a00, 0x0a03, 0x0a08, 0x0a06]);
    for m in &msgs[1..5] {
        assert_ne!(m.flags & NLM_F_ACK, 0);
        assert_eq!(&m.payload[..4], &[NFPROTO_INET, 0, 0, 0]);
    }
    // no EXCL on the creating messages, APPEND on the rule
    assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    assert_eq!(msgs[2].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    assert_eq!(msgs[3].flags, NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(msgs[4].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
    // the flush carries exactly table + chain
    let flush = parse_attrs(&msgs[3].payload[4..]);
    assert_eq!(flush.iter().map(|a| a.0).collect::<Vec<_>>(), [NFTA_RULE_TABLE, NFTA_RULE_CHAIN]);
    // the rule carries its comment
    let rule = rule_of(msgs[4].payload).unwrap();
    assert_eq!((rule.table.as_str(), rule.chain.as_str()), ("t", "c"));
    assert_eq!(rule.comment().as_deref(), Some("hi"));
    // and what we write decodes back to what we meant
    assert_eq!(rule.exprs, Some(masquerade_exprs(net("10.0.0.0/8"))));
}

#[rustfmt::skip]
/// Byte-for-byte what `nft --debug=mnl` (1.0.6) sends for
/// `iifname "veth1"` / `ether saddr != 02:00:00:00:00:01 drop comment "x"`.
#[test]
fn expressions_match_nft_bytes() {
    let exprs = macspoof_exprs("veth1", [2, 0, 0, 0, 0, 1]).unwrap();
    let mut b = Vec::new();
    put_expr(&mut b, &exprs[0]);
    let meta = cat(&[
        &[36, 0, 1, 0x80],
        &[9, 0, 1, 0], b"meta", &[0, 0, 0, 0],
        &[20, 0, 2, 0x80],
        &[8, 0, 2, 0], &[0, 0, 0, 6],
        &[8, 0, 1, 0], &[0, 0, 0, 1],
    ]);
    assert_eq!(b, meta);

    let mut b = Vec::new();
    put_expr(&mut b, &exprs[3]);
    let cmp = cat(&[
        &[48, 0, 1, 0x80],
        &[8, 0, 1, 0], b"cmp\0",
        &[36, 0, 2, 0x80],
        &[8, 0, 1, 0], &[0, 0, 0, 1],
        &[8, 0, 2, 0], &[0, 0, 0, 1],
        &[16, 0, 3, 0x80],
        &[10, 0, 1, 0], &[2, 0, 0, 0, 0, 1, 0, 0],
    ]);
    assert_eq!(b, cmp);

    let mut b = Vec::new();
    put_expr(&mut b, &exprs[4]);
    let imm = cat(&[
        &[48, 0, 1, 0x80],
        &[14, 0, 1, 0], b"immediate\0\0\0",
        &[28, 0, 2, 0x80],
        &[8, 0, 1, 0], &[0, 0, 0, 0],
        &[16, 0, 2, 0x80],
        &[12, 0, 2, 0x80],
        &[8, 0, 1, 0], &[0, 0, 0, 0],
    ]);
    assert_eq!(b, imm);

    assert_eq!(comment_userdata("x").unwrap(), [0, 2, b'x', 0]);
}

#[test]
fn prefix_encoding_follows_nft() {
    // byte-aligned: load only the prefix bytes
    let e = prefix_match(12, "10.99.0.0".parse().unwrap(), 24, NFT_CMP_EQ);
    assert_eq!(
        e,
        [Expr::Payload { base: 1, offset: 12, len: 3 }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 99, 0] },]
    );
    // unaligned: whole field + mask
    let e = prefix_match(12, "10.96.0.0".parse().unwrap(), 12, NFT_CMP_EQ);
    assert_eq!(e[0], Expr::Payload { base: 1, offset: 12, len: 4 });
    assert_eq!(e[1], Expr::Bitwise { mask: vec![0xff, 0xf0, 0, 0] });
    assert_eq!(e[2], Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 96, 0, 0] });
    // /0: zero mask, never a zero-length load
    let e = prefix_match(16, "0.0.0.0".parse().unwrap(), 0, NFT_CMP_NEQ);
    assert_eq!(e[1], Expr::Bitwise { mask: vec![0; 4] });
    // /32 and /128 compare everything
    let e = prefix_match(24, "fd00::1".parse().unwrap(), 128, NFT_CMP_NEQ);
    assert_eq!(e[0], Expr::Payload { base: 1, offset: 24, len: 16 });
    let e = prefix_match(24, "fd00::".parse().unwrap(), 60, NFT_CMP_EQ);
    assert_eq!(e[1], Expr::Bitwise { mask: [vec![0xff; 7], vec![0xf0], vec![0; 8]].concat() });
}

#[test]
fn masquerade_rule_shape() {
    let e = masquerade_exprs(net("10.99.0.7/24"));
    assert_eq!(e[0], Expr::Meta { key: NFT_META_NFPROTO });
    assert_eq!(e[1], Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] });
    // host bits are cleared
    assert_eq!(e[3], Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 99, 0] });
    assert_eq!(e[4], Expr::Payload { base: 1, offset: 16, len: 3 });
    assert_eq!(e[5], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![10, 99, 0] });
    // 224.0.0.0/4
    assert_eq!(e[7], Expr::Bitwise { mask: vec![0xf0, 0, 0, 0] });
    assert_eq!(e[8], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![224, 0, 0, 0] });
    assert_eq!(e.last(), Some(&Expr::Masq));

    let e = masquerade_exprs(net("fd00:99::/64"));
    assert_eq!(e[1], Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV6] });
    assert_eq!(e[2], Expr::Payload { base: 1, offset: 8, len: 8 });
    assert_eq!(e[4], Expr::Payload { base: 1, offset: 24, len: 8 });
    // ff00::/8
    assert_eq!(e[6], Expr::Payload { base: 1, offset: 24, len: 1 });
    assert_eq!(e[7], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0xff] });
}

#[test]
fn masq_expr_has_no_data() {
    let mut b = Vec::new();
    put_expr(&mut b, &Expr::Masq);
    assert_eq!(b, [[16, 0, 1, 0x80], [9, 0, 1, 0], *b"masq", [0, 0, 0, 0]].concat());
}

#[test]
fn chain_name_is_stable_and_canonical() {
    let a = masq_chain_name(net("10.99.0.0/24"));
    assert_eq!(a, masq_chain_name(net("10.99.0.42/24")));
    assert_ne!(a, masq_chain_name(net("10.99.1.0/24")));
    assert_eq!(a.len(), 13);
    // FNV-1a reference values
    assert_eq!(fnv1a32(b""), 0x811c_9dc5);
    assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    assert_eq!(a, format!("masq_{:08x}", fnv1a32(b"10.99.0.0/24")));
}

#[test]
fn validation() {
    let mut b = Batch::new();
    assert!(matches!(b.new_table(Family::Inet, ""), Err(NftError::Invalid(_))));
    assert!(matches!(b.new_table(Family::Inet, &"x".repeat(256)), Err(NftError::Invalid(_))));
    assert!(b.new_table(Family::Inet, &"x".repeat(255)).is_ok());
    assert!(matches!(macspoof_exprs("0123456789abcdef", [0; 6]), Err(NftError::Invalid(_))));
    assert!(macspoof_exprs("0123456789abcde", [0; 6]).is_ok());
    assert!(comment_userdata(&"c".repeat(MAX_COMMENT_LEN)).is_ok());
    assert!(comment_userdata(&"c".repeat(MAX_COMMENT_LEN + 1)).is_err());
    let u = comment_userdata(&"c".repeat(MAX_COMMENT_LEN)).unwrap();
    assert_eq!(u.len(), NFT_USERDATA_MAXLEN);
}

#[test]
fn comment_parsing() {
    assert_eq!(parse_comment(&[0, 3, b'h', b'i', 0]).as_deref(), Some("hi"));
    // other TLVs first (e.g. ebtables compat), comment later
    assert_eq!(parse_comment(&[1, 1, 9, 0, 2, b'x', 0]).as_deref(), Some("x"));
    assert_eq!(parse_comment(&[1, 1, 9]), None);
    assert_eq!(parse_comment(&[0, 9, b'x']), None); // truncated
}

#[test]
fn ack_parsing() {
    // NLMSG_ERROR answering seq 7 with -EEXIST, followed by a plain ack for seq 8
    let mut d = Vec::new();
    for (seq, err) in [(7u32, -libc::EEXIST), (8, 0)] {
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&err.to_ne_bytes());
        // echoed original header
        d.extend_from_slice(&20u32.to_ne_bytes());
        d.extend_from_slice(&nft_type(NFT_MSG_NEWCHAIN).to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
    }
    let msgs = parse_msgs(&d).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(parse_error(msgs[0].payload).unwrap(), (libc::EEXIST, 7));
    assert_eq!(parse_error(msgs[1].payload).unwrap(), (0, 8));
    assert_eq!(parse_msgs(&d[..46]).unwrap().len(), 1); // trailing partial header ignored
    assert!(parse_msgs(&d[..30]).is_err()); // truncated message
    let mut bad = d.clone();
    bad[0] = 200;
    assert!(parse_msgs(&bad).is_err());
}

#[test]
fn error_display_names_op_and_errno() {
    let e = NftError::Kernel { op: "add chain masq_x in table inet cni_br_ab12".into(), errno: libc::EEXIST };
    assert_eq!(e.to_string(), "add chain masq_x in table inet cni_br_ab12: EEXIST");
    assert_eq!(e.errno(), Some(libc::EEXIST));
    let e = NftError::Kernel { op: "x".into(), errno: 4095 };
    assert_eq!(e.to_string(), "x: errno 4095");
}

#[test]
fn decode_accepts_kernel_extras_and_rejects_foreign_exprs() {
    // a kernel dump of bitwise carries NFTA_BITWISE_OP (0 = mask/xor)
    let mut b = Vec::new();
    let elem = nest_start(&mut b, NFTA_LIST_ELEM);
    put_strz(&mut b, NFTA_EXPR_NAME, "bitwise");
    let d = nest_start(&mut b, NFTA_EXPR_DATA);
    put_be32(&mut b, NFTA_BITWISE_SREG, NFT_REG_1);
    put_be32(&mut b, NFTA_BITWISE_DREG, NFT_REG_1);
    put_be32(&mut b, NFTA_BITWISE_LEN, 4);
    put_be32(&mut b, NFTA_BITWISE_OP, 0);
    put_data_value(&mut b, NFTA_BITWISE_MASK, &[0xf0, 0, 0, 0]);
    put_data_value(&mut b, NFTA_BITWISE_XOR, &[0; 4]);
    nest_end(&mut b, d);
    nest_end(&mut b, elem);
    let want = Expr::Bitwise { mask: vec![0xf0, 0, 0, 0] };
    assert_eq!(decode_exprs(&b), Some(vec![want]));

    // masq with explicit zero flags is still plain masq; with flags it is not
    let masq = |flags: Option<u32>| {
        let mut b = Vec::new();
        let elem = nest_start(&mut b, NFTA_LIST_ELEM);
        put_strz(&mut b, NFTA_EXPR_NAME, "masq");
        if let Some(f) = flags {
            let d = nest_start(&mut b, NFTA_EXPR_DATA);
            put_be32(&mut b, NFTA_MASQ_FLAGS, f);
            nest_end(&mut b, d);
        }
        nest_end(&mut b, elem);
        decode_exprs(&b)
    };
    assert_eq!(masq(None), Some(vec![Expr::Masq]));
    assert_eq!(masq(Some(0)), Some(vec![Expr::Masq]));
    assert_eq!(masq(Some(4)), None); // NF_NAT_RANGE_PROTO_RANDOM

    // a jump verdict is not a plain verdict
    let mut b = Vec::new();
    let elem = nest_start(&mut b, NFTA_LIST_ELEM);
    put_strz(&mut b, NFTA_EXPR_NAME, "immediate");
    let d = nest_start(&mut b, NFTA_EXPR_DATA);
    put_be32(&mut b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
    let data = nest_start(&mut b, NFTA_IMMEDIATE_DATA);
    let v = nest_start(&mut b, NFTA_DATA_VERDICT);
    put_be32(&mut b, NFTA_VERDICT_CODE, (-3i32) as u32);
    put_strz(&mut b, NFTA_VERDICT_CHAIN, "elsewhere");
    nest_end(&mut b, v);
    nest_end(&mut b, data);
    nest_end(&mut b, d);
    nest_end(&mut b, elem);
    assert_eq!(decode_exprs(&b), None);

    // unknown expressions make the whole rule foreign
    let mut b = Vec::new();
    put_expr(&mut b, &Expr::Masq);
    let elem = nest_start(&mut b, NFTA_LIST_ELEM);
    put_strz(&mut b, NFTA_EXPR_NAME, "counter");
    nest_end(&mut b, elem);
    assert_eq!(decode_exprs(&b), None);
}

#[test]
fn every_rule_we_write_decodes_to_itself() {
    for s in ["10.0.0.0/8", "10.96.0.0/12", "0.0.0.0/0", "10.1.2.3/32", "fd00::/60", "::/0"] {
        let exprs = masquerade_exprs(net(s));
        let mut b = Vec::new();
        for e in &exprs {
            put_expr(&mut b, e);
        }
        assert_eq!(decode_exprs(&b), Some(exprs), "{s}");
    }
    let exprs = macspoof_exprs("veth0", [2, 0, 0, 0, 0, 1]).unwrap();
    let mut b = Vec::new();
    for e in &exprs {
        put_expr(&mut b, e);
    }
    assert_eq!(decode_exprs(&b), Some(exprs));
}

#[test]
fn chain_parsing() {
    let mut b = Batch::with_seq(1);
    b.new_base_chain(Family::Bridge, "t", "c", "filter", NF_BR_PRE_ROUTING, -300).unwrap();
    let (bytes, _, _) = b.finish();
    let msgs = parse_msgs(&bytes).unwrap();
    let c = chain_of(msgs[1].payload).unwrap();
    assert_eq!(
        c,
        ChainInfo {
            table: "t".into(),
            name: "c".into(),
            hook: Some((NF_BR_PRE_ROUTING, -300)),
            chain_type: Some("filter".into()),
            policy: Some(NF_ACCEPT),
            use_count: None,
        }
    );
}

#[test]
fn dump_request_shape() {
    let r = dump_request(NFT_MSG_GETRULE, Family::Bridge, 2, &[(NFTA_RULE_TABLE, "t")]);
    let m = parse_msgs(&r).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].ty, 0x0a07);
    assert_eq!(m[0].flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(m[0].payload[0], NFPROTO_BRIDGE);
}

#[test]
fn rule_get_by_handle_bytes() {
    let r = rule_get_request(Family::Inet, 7, "t", "c", 0x0102_0304_0506_0708);
    #[rustfmt::skip]
    let want = cat(&[
        &48u32.to_ne_bytes(), &0x0a07u16.to_ne_bytes(), &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes(),
        &7u32.to_ne_bytes(), &0u32.to_ne_bytes(),
        &[NFPROTO_INET, NFNETLINK_V0, 0, 0],
        &6u16.to_ne_bytes(), &NFTA_RULE_TABLE.to_ne_bytes(), b"t\0\0\0",
        &6u16.to_ne_bytes(), &NFTA_RULE_CHAIN.to_ne_bytes(), b"c\0\0\0",
        &12u16.to_ne_bytes(), &NFTA_RULE_HANDLE.to_ne_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8],
    ]);
    assert_eq!(r, want);
}

#[test]
fn rule_handle_is_parsed() {
    // A NEWRULE as the kernel sends it: nfgenmsg, table, chain, handle (be64).
    let mut p = vec![NFPROTO_INET, NFNETLINK_V0, 0, 0];
    put_strz(&mut p, NFTA_RULE_TABLE, "t");
    put_strz(&mut p, NFTA_RULE_CHAIN, "c");
    put_attr(&mut p, NFTA_RULE_HANDLE, &42u64.to_be_bytes());
    let r = rule_of(&p).unwrap();
    assert_eq!((r.table.as_str(), r.chain.as_str(), r.handle), ("t", "c", Some(42)));
    assert_eq!(r.exprs, Some(vec![]));
}

// ---------------------------------------------------------------------------
// transaction API: element keys, rule expressions, batch contents
// ---------------------------------------------------------------------------

mod txn_encoding {
    use super::super::txn::elem_keys;
    use super::*;

    const END: u32 = NFT_SET_ELEM_INTERVAL_END;

    #[test]
    fn interval_elements_are_start_and_end_plus_one() {
        let v4 = SetDef::interval_set("s", SetKey::Ipv4Addr);
        assert_eq!(
            elem_keys(&v4, &SetElem::Net(net("10.1.2.3/24"))).unwrap(),
            [(vec![10, 1, 2, 0], 0), (vec![10, 1, 3, 0], END)]
        );
        assert_eq!(
            elem_keys(&v4, &SetElem::Addr("10.0.0.255".parse().unwrap())).unwrap(),
            [(vec![10, 0, 0, 255], 0), (vec![10, 0, 1, 0], END)]
        );
        // a range up to the largest value has no end element
        assert_eq!(elem_keys(&v4, &SetElem::Net(net("0.0.0.0/0"))).unwrap(), [(vec![0, 0, 0, 0], 0)]);
        assert_eq!(elem_keys(&v4, &SetElem::Net(net("255.255.255.0/24"))).unwrap(), [(vec![255, 255, 255, 0], 0)]);
        let v6 = SetDef::interval_set("s", SetKey::Ipv6Addr);
        let keys = elem_keys(&v6, &SetElem::Net(net("fd00::/8"))).unwrap();
        assert_eq!(keys[0].0[..2], [0xfd, 0]);
        assert_eq!(keys[1], ([vec![0xfe], vec![0; 15]].concat(), END));
        let ports = SetDef::interval_set("p", SetKey::InetService);
        assert_eq!(
            elem_keys(&ports, &SetElem::PortRange(5000, 5010)).unwrap(),
            [(vec![0x13, 0x88], 0), (vec![0x13, 0x93], END)]
        );
        assert_eq!(elem_keys(&ports, &SetElem::PortRange(1, 65535)).unwrap(), [(vec![0, 1], 0)]);
    }

    #[test]
    fn plain_sets_refuse_ranges_and_wrong_types() {
        let v4 = SetDef::set("s", SetKey::Ipv4Addr);
        assert_eq!(elem_keys(&v4, &SetElem::Net(net("10.0.0.1/32"))).unwrap(), [(vec![10, 0, 0, 1], 0)]);
        assert!(elem_keys(&v4, &SetElem::Net(net("10.0.0.0/31"))).is_err());
        assert!(elem_keys(&v4, &SetElem::Addr("::1".parse().unwrap())).is_err());
        assert!(elem_keys(&v4, &SetElem::Port(80)).is_err());
        let ports = SetDef::set("p", SetKey::InetService);
        assert!(elem_keys(&ports, &SetElem::PortRange(1, 2)).is_err());
        assert!(elem_keys(&SetDef::interval_set("p", SetKey::InetService), &SetElem::PortRange(2, 1)).is_err());
        let names = SetDef::verdict_map("m", SetKey::IfName);
        let key = elem_keys(&names, &SetElem::IfName("vra".into())).unwrap();
        assert_eq!(key, [([b"vra".to_vec(), vec![0; 13]].concat(), 0)]);
        assert!(elem_keys(&names, &SetElem::IfName("sixteen-bytes-xx".into())).is_err());
        assert!(elem_keys(&SetDef::interval_set("i", SetKey::IfName), &SetElem::IfName("a".into())).is_err());
    }

    #[test]
    fn rule_expressions_match_nft() {
        // nft --debug=netlink for `ct state established,related accept`:
        // ct load state => reg 1; bitwise reg 1 = (reg 1 & 0x00000006) ^ 0;
        // cmp neq reg 1 0x00000000; immediate reg 0 accept
        let r = Rule::new(
            vec![Match::CtState { states: CtStates::ESTABLISHED | CtStates::RELATED, negate: false }],
            Verdict::Accept,
        );
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Ct { key: NFT_CT_STATE },
                Expr::Bitwise { mask: 6u32.to_ne_bytes().to_vec() },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0; 4] },
                Expr::Verdict { code: NF_ACCEPT },
            ]
        );
        // `ip6 saddr != @s tcp dport 80-90 counter log prefix "x" jump c`
        let r = Rule {
            matches: vec![
                Match::AddrInSet { version: IpVersion::V6, dir: Dir::Src, set: "s".into(), negate: true },
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 80, last: 90, negate: false },
            ],
            counter: true,
            log_prefix: Some("x".into()),
            action: Some(Action::Verdict(Verdict::Jump("c".into()))),
            mark: None,
            comment: None,
        };
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_NFPROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV6] },
                Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 8, len: 16 },
                Expr::Lookup { set: "s".into(), vmap: false, invert: true },
                Expr::Meta { key: NFT_META_L4PROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![6] },
                Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2 },
                Expr::Range { op: NFT_RANGE_EQ, from: vec![0, 80], to: vec![0, 90] },
                Expr::Counter,
                Expr::Log { prefix: Some("x".into()) },
                Expr::VerdictChain { code: NFT_JUMP, chain: "c".into() },
            ]
        );
        // `tcp dport != 80 tcp dport != 1000-2000 ip saddr != 10.0.0.0/8 ip saddr != @s drop`:
        // the port is loaded once for its two compares; the mask in between makes the address
        // be loaded again for the lookup
        let r = Rule::new(
            vec![
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 80, last: 80, negate: true },
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 1000, last: 2000, negate: true },
                Match::AddrInNet { dir: Dir::Src, net: "10.0.0.0/7".parse().unwrap(), negate: true },
                Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "s".into(), negate: true },
            ],
            Verdict::Drop,
        );
        let sport = Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2 };
        let saddr = Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4 };
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_L4PROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![6] },
                sport,
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0, 80] },
                Expr::Range { op: NFT_RANGE_NEQ, from: vec![3, 232], to: vec![7, 208] },
                Expr::Meta { key: NFT_META_NFPROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] },
                saddr.clone(),
                Expr::Bitwise { mask: vec![254, 0, 0, 0] },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![10, 0, 0, 0] },
                saddr,
                Expr::Lookup { set: "s".into(), vmap: false, invert: true },
                Expr::Verdict { code: NF_DROP },
            ]
        );
        let r = Rule { action: Some(Action::IfNameVmap { dir: IfDir::Out, map: "m".into() }), ..Default::default() };
        assert_eq!(
            r.exprs().unwrap(),
            [Expr::Meta { key: NFT_META_OIFNAME }, Expr::Lookup { set: "m".into(), vmap: true, invert: false }]
        );
        let bad = Rule::new(
            vec![Match::PortRange { proto: proto::ICMP, dir: Dir::Dst, first: 1, last: 1, negate: false }],
            Verdict::Drop,
        );
        assert!(matches!(bad.exprs(), Err(NftError::Invalid(_))));
    }

    #[test]
    fn large_element_lists_are_split_into_messages_of_one_batch() {
        let t = TableRef::new(Family::Inet, "t");
        let map = SetDef::verdict_map("m", SetKey::IfName);
        let entries: Vec<(SetElem, Verdict)> =
            (0..2000).map(|i| (SetElem::IfName(format!("if{i}")), Verdict::Goto(format!("chain{i}")))).collect();
        let mut x = Transaction::new();
        x.add_map_entries(&t, &map, &entries).unwrap();
        assert!(x.len() > 1, "2000 entries must not fit one 64 KiB attribute");
        let (bytes, _, _) = x.into_batch().finish();
        let msgs = parse_msgs(&bytes).unwrap();
        let mut seen = 0;
        for m in &msgs[1..msgs.len() - 1] {
            assert_eq!(m.ty, nft_type(NFT_MSG_NEWSETELEM));
            let attrs = parse_attrs(&m.payload[NFGENMSG_LEN..]);
            let list = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
            seen += parse_attrs(list).len();
        }
        assert_eq!(seen, 2000);
    }

    #[test]
    fn policy_pieces_match_nft() {
        // nft --debug=netlink (1.0.6), table inet:
        // `ip saddr vmap @m4`: meta load nfproto; cmp eq 2; payload 4b @ nh + 12; lookup set m4 dreg 0
        let r = Rule {
            action: Some(Action::AddrVmap { version: IpVersion::V4, dir: Dir::Src, map: "m4".into() }),
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_NFPROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] },
                Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4 },
                Expr::Lookup { set: "m4".into(), vmap: true, invert: false },
            ]
        );
        // `ip6 daddr vmap @m6`: ... payload 16b @ nh + 24; lookup set m6 dreg 0
        let r = Rule {
            action: Some(Action::AddrVmap { version: IpVersion::V6, dir: Dir::Dst, map: "m6".into() }),
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap()[1..3],
            [
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV6] },
                Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 24, len: 16 },
            ]
        );
        // `meta mark & 0x00100000 != 0 return`:
        // meta load mark; bitwise (reg & 0x00100000) ^ 0; cmp neq 0; immediate return
        let bit = 0x0010_0000u32;
        let r = Rule::new(vec![Match::MarkBits { mask: bit, set: true }], Verdict::Return);
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_MARK },
                Expr::Bitwise { mask: bit.to_ne_bytes().to_vec() },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0; 4] },
                Expr::Verdict { code: NFT_RETURN },
            ]
        );
        let r = Rule::new(vec![Match::MarkBits { mask: bit, set: false }], Verdict::Accept);
        assert_eq!(r.exprs().unwrap()[2], Expr::Cmp { op: NFT_CMP_EQ, data: vec![0; 4] });
        // `meta mark set meta mark | 0x00100000 return`:
        // meta load mark; bitwise (reg & 0xffefffff) ^ 0x00100000; meta set mark with reg 1; return
        let r = Rule {
            mark: Some(MarkStmt::Set(bit)),
            action: Some(Action::Verdict(Verdict::Return)),
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_MARK },
                Expr::MaskXor { mask: (!bit).to_ne_bytes().to_vec(), xor: bit.to_ne_bytes().to_vec() },
                Expr::MetaSet { key: NFT_META_MARK },
                Expr::Verdict { code: NFT_RETURN },
            ]
        );
        // `meta mark set meta mark & 0xffefffff`: (reg & 0xffefffff) ^ 0
        let r = Rule { mark: Some(MarkStmt::Clear(bit)), ..Default::default() };
        assert_eq!(r.exprs().unwrap()[1], Expr::MaskXor { mask: (!bit).to_ne_bytes().to_vec(), xor: vec![0; 4] });
        // `icmp type != 8`: nfproto ipv4, l4proto icmp, payload 1b @ th + 0, cmp neq 8
        let r = Rule {
            matches: vec![Match::Icmp { version: IpVersion::V4, icmp_type: 8, code: None, negate: true }],
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap(),
            [
                Expr::Meta { key: NFT_META_NFPROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] },
                Expr::Meta { key: NFT_META_L4PROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![proto::ICMP] },
                Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: 1 },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![8] },
            ]
        );
        // not (type 128 and code 0): the two header bytes at once
        let r = Rule {
            matches: vec![Match::Icmp { version: IpVersion::V6, icmp_type: 128, code: Some(0), negate: true }],
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap()[3..],
            [
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![proto::ICMPV6] },
                Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: 2 },
                Expr::Cmp { op: NFT_CMP_NEQ, data: vec![128, 0] },
            ]
        );
    }

    #[test]
    fn concatenated_keys_match_nft() {
        // nft --debug=netlink (1.0.6), table bridge, map own4 { type ifname . ipv4_addr : verdict; }:
        // `iifname . ip saddr vmap @own4`: meta load protocol => reg 1; cmp eq reg 1 0x0008;
        // meta load iifname => reg 1; payload load 4b @ network header + 12 => reg 2;
        // lookup reg 1 set own4 dreg 0
        let r = Rule {
            action: Some(Action::IfAddrVmap {
                iface: IfDir::In,
                addr: AddrField::Ip { version: IpVersion::V4, dir: Dir::Src },
                map: "own4".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            r.exprs_in(Family::Bridge).unwrap(),
            [
                Expr::Meta { key: NFT_META_PROTOCOL },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![0x08, 0x00] },
                Expr::Meta { key: NFT_META_IIFNAME },
                Expr::PayloadTo { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4, dreg: NFT_REG_2 },
                Expr::Lookup { set: "own4".into(), vmap: true, invert: false },
            ]
        );
        // `oifname . ip6 daddr vmap @own6` in inet: nfproto ipv6, oifname, 16b @ nh + 24 => reg 2
        let r = Rule {
            action: Some(Action::IfAddrVmap {
                iface: IfDir::Out,
                addr: AddrField::Ip { version: IpVersion::V6, dir: Dir::Dst },
                map: "own6".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            r.exprs_in(Family::Inet).unwrap()[1..4],
            [
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV6] },
                Expr::Meta { key: NFT_META_OIFNAME },
                Expr::PayloadTo { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 24, len: 16, dreg: NFT_REG_2 },
            ]
        );
        // `iifname . arp saddr ip vmap @own4`: payload load 2b @ link header + 12 => reg 1;
        // cmp eq reg 1 0x0608; meta load iifname; payload load 4b @ network header + 14 => reg 2
        let arp = Rule {
            action: Some(Action::IfAddrVmap { iface: IfDir::In, addr: AddrField::ArpSender, map: "own4".into() }),
            ..Default::default()
        };
        assert_eq!(
            arp.exprs_in(Family::Bridge).unwrap()[..4],
            [
                Expr::Payload { base: NFT_PAYLOAD_LL_HEADER, offset: 12, len: 2 },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![0x08, 0x06] },
                Expr::Meta { key: NFT_META_IIFNAME },
                Expr::PayloadTo { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 14, len: 4, dreg: NFT_REG_2 },
            ]
        );
        // ARP is only seen in a bridge table: refused elsewhere
        assert!(matches!(arp.exprs_in(Family::Inet), Err(NftError::Invalid(_))));
        // `arp saddr ip 0.0.0.0 return`
        let probe =
            Rule::new(vec![Match::ArpSenderIp { addr: "0.0.0.0".parse().unwrap(), negate: false }], Verdict::Return);
        assert_eq!(
            probe.exprs_in(Family::Bridge).unwrap()[2..4],
            [
                Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 14, len: 4 },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![0; 4] },
            ]
        );
        // the payload into reg 2, with libnftnl's attribute order
        let mut b = Vec::new();
        put_expr(&mut b, &Expr::PayloadTo { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4, dreg: NFT_REG_2 });
        let mut want = Vec::new();
        let el = nest_start(&mut want, NFTA_LIST_ELEM);
        put_strz(&mut want, NFTA_EXPR_NAME, "payload");
        let d = nest_start(&mut want, NFTA_EXPR_DATA);
        put_be32(&mut want, NFTA_PAYLOAD_DREG, 2);
        put_be32(&mut want, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        put_be32(&mut want, NFTA_PAYLOAD_OFFSET, 12);
        put_be32(&mut want, NFTA_PAYLOAD_LEN, 4);
        nest_end(&mut want, d);
        nest_end(&mut want, el);
        assert_eq!(b, want);
        // nft --debug=mnl: the set's key type (41 << 6) | 7 = 0x0a47, length 20 (16 + 4); the
        // element `"veth0" . 10.0.0.1` is the NUL-padded name then the address
        assert_eq!(SetKey::IfNameIpv4.type_len(), (0x0a47, 20));
        assert_eq!(SetKey::IfNameIpv6.type_len(), ((41 << 6) | 8, 32));
        let def = SetDef::verdict_map("own4", SetKey::IfNameIpv4);
        let e = SetElem::IfNameAddr("veth0".into(), "10.0.0.1".parse().unwrap());
        let mut key = b"veth0".to_vec();
        key.resize(16, 0);
        key.extend_from_slice(&[10, 0, 0, 1]);
        assert_eq!(elem_keys(&def, &e).unwrap(), [(key, 0)]);
        // the other family's address, an interval concatenation and a long name are refused
        let v6 = SetElem::IfNameAddr("veth0".into(), "fd00::1".parse().unwrap());
        assert!(elem_keys(&def, &v6).is_err());
        assert!(elem_keys(&SetDef::interval_set("x", SetKey::IfNameIpv4), &e).is_err());
        let long = SetElem::IfNameAddr("a-very-long-ifname".into(), "10.0.0.1".parse().unwrap());
        assert!(elem_keys(&def, &long).is_err());
    }

    #[test]
    fn a_protocol_check_is_made_once_per_rule() {
        // `meta l4proto tcp tcp dport 80 accept`: the port match's own `meta l4proto tcp` is
        // the rule's first match already, as nft writes it
        let r = Rule::new(
            vec![
                Match::L4Proto { proto: proto::TCP, negate: false },
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 80, last: 80, negate: false },
            ],
            Verdict::Accept,
        );
        let e = r.exprs().unwrap();
        assert_eq!(e.iter().filter(|x| **x == Expr::Meta { key: NFT_META_L4PROTO }).count(), 1, "{e:?}");
        // two address matches of one family: one `meta nfproto ipv4`
        let r = Rule::new(
            vec![
                Match::IpVersion(IpVersion::V4),
                Match::AddrInNet { dir: Dir::Src, net: net("10.0.0.0/8"), negate: false },
                Match::AddrInNet { dir: Dir::Dst, net: net("10.1.0.0/16"), negate: true },
            ],
            Verdict::Drop,
        );
        let e = r.exprs().unwrap();
        assert_eq!(e.iter().filter(|x| **x == Expr::Meta { key: NFT_META_NFPROTO }).count(), 1, "{e:?}");
        assert_eq!(
            e[..2],
            [Expr::Meta { key: NFT_META_NFPROTO }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] }]
        );
        // a negated protocol (`!=`) is a condition, not a dependency: both checks stay (on one
        // load of the protocol: the compare leaves the register as it was)
        let l4 = Expr::Meta { key: NFT_META_L4PROTO };
        let r = Rule::new(
            vec![
                Match::L4Proto { proto: proto::UDP, negate: true },
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 80, last: 80, negate: false },
            ],
            Verdict::Accept,
        );
        let e = r.exprs().unwrap();
        let (neq, eq) = (Expr::Cmp { op: NFT_CMP_NEQ, data: vec![17] }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![6] });
        assert_eq!(e[..3], [l4.clone(), neq, eq], "{e:?}");
        // another protocol's check is not a repeat (such a rule never matches, as written)
        let r = Rule::new(
            vec![
                Match::L4Proto { proto: proto::UDP, negate: false },
                Match::PortRange { proto: proto::TCP, dir: Dir::Dst, first: 80, last: 80, negate: false },
            ],
            Verdict::Accept,
        );
        let e = r.exprs().unwrap();
        let (udp, tcp) = (Expr::Cmp { op: NFT_CMP_EQ, data: vec![17] }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![6] });
        assert_eq!(e[..3], [l4, udp, tcp], "{e:?}");
    }

    #[test]
    fn mark_statements_encode_and_decode() {
        // bitwise with a xor value, meta set with sreg, as libnftnl orders the attributes
        let mut b = Vec::new();
        put_expr(&mut b, &Expr::MetaSet { key: NFT_META_MARK });
        let a = parse_attrs(&b);
        let data = parse_attrs(find_attr(&parse_attrs(a[0].1), NFTA_EXPR_DATA).unwrap());
        assert_eq!(data, [(NFTA_META_KEY, &3u32.to_be_bytes()[..]), (NFTA_META_SREG, &1u32.to_be_bytes()[..])]);
        for e in [
            Expr::MetaSet { key: NFT_META_MARK },
            Expr::MaskXor { mask: vec![0xff, 0xff, 0xef, 0xff], xor: vec![0, 0, 0x10, 0] },
        ] {
            let mut b = Vec::new();
            put_expr(&mut b, &e);
            assert_eq!(decode_exprs(&b), Some(vec![e]));
        }
    }

    #[test]
    fn txn_types_round_trip_through_json() {
        let r = Rule {
            matches: vec![
                Match::CtState { states: CtStates::NEW, negate: false },
                Match::AddrInNet { dir: Dir::Src, net: net("10.0.0.0/8"), negate: true },
                Match::Icmp { version: IpVersion::V6, icmp_type: 128, code: Some(0), negate: true },
                Match::MarkBits { mask: 0x10_0000, set: false },
            ],
            counter: true,
            log_prefix: Some("p".into()),
            mark: Some(MarkStmt::Clear(0x10_0000)),
            action: Some(Action::AddrVmap { version: IpVersion::V4, dir: Dir::Dst, map: "m".into() }),
            comment: Some("c".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), r);
        let b = BaseChain::filter(Hook::Forward, 1, ChainPolicy::Accept);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<BaseChain>(&json).unwrap(), b);
        assert!(serde_json::from_str::<BaseChain>(&json.replace("filter", "bogus")).is_err());
        let e = vec![SetElem::Net(net("fd00::/64")), SetElem::PortRange(1, 2), SetElem::IfName("x".into())];
        assert_eq!(serde_json::from_str::<Vec<SetElem>>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
        // fields at their default are left out of the JSON (the engine persists thousands of rules)
        let plain = serde_json::to_string(&Rule::new(vec![], Verdict::Drop)).unwrap();
        assert_eq!(plain, r#"{"matches":[],"action":{"Verdict":"Drop"}}"#);
        assert_eq!(serde_json::from_str::<Rule>(&plain).unwrap(), Rule::new(vec![], Verdict::Drop));
        // a rule written before `mark` and ICMP `negate` existed still reads
        let old = r#"{"matches":[{"Icmp":{"version":"V4","icmp_type":8,"code":null}}],"counter":false,"log_prefix":null,"action":null,"comment":null}"#;
        let r: Rule = serde_json::from_str(old).unwrap();
        assert_eq!(r.mark, None);
        assert_eq!(r.matches, [Match::Icmp { version: IpVersion::V4, icmp_type: 8, code: None, negate: false }]);
    }

    #[test]
    fn bridge_family_uses_meta_protocol() {
        // nft --debug=netlink, table bridge: `ip saddr 10.0.0.1 return`:
        // meta load protocol; cmp eq 0x0008; payload 4b @ nh + 12; cmp eq; return
        let r = Rule::new(
            vec![Match::AddrInNet { dir: Dir::Src, net: net("10.0.0.1/32"), negate: false }],
            Verdict::Return,
        );
        assert_eq!(
            r.exprs_in(Family::Bridge).unwrap(),
            [
                Expr::Meta { key: NFT_META_PROTOCOL },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![0x08, 0x00] },
                Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4 },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 0, 0, 1] },
                Expr::Verdict { code: NFT_RETURN },
            ]
        );
        // `meta protocol ip6 drop`
        let r = Rule::new(vec![Match::IpVersion(IpVersion::V6)], Verdict::Drop);
        assert_eq!(
            r.exprs_in(Family::Bridge).unwrap()[..2],
            [Expr::Meta { key: NFT_META_PROTOCOL }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![0x86, 0xdd] }]
        );
        // inet (and ip, ip6) keep meta nfproto
        assert_eq!(r.exprs_in(Family::Inet).unwrap()[0], Expr::Meta { key: NFT_META_NFPROTO });
    }

    #[test]
    fn icmp_type_and_code_are_one_compare_as_nft_merges_them() {
        // nft --debug=netlink for `icmp type 8 icmp code 0`:
        // nfproto ipv4; l4proto icmp; payload load 2b @ transport header + 0; cmp eq 0x0008
        let r = Rule {
            matches: vec![Match::Icmp { version: IpVersion::V4, icmp_type: 8, code: Some(0), negate: false }],
            ..Default::default()
        };
        assert_eq!(
            r.exprs().unwrap()[4..],
            [
                Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: 2 },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![8, 0] },
            ]
        );
    }
}
