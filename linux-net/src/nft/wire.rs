//! Kernel constants of nfnetlink and nf_tables, checked against the uapi
//! headers named in the [module docs](super). Nothing but numbers.

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLA_HDRLEN: usize = 4;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(super) const NLM_F_REQUEST: u16 = 0x01;
pub(super) const NLM_F_ACK: u16 = 0x04;
pub(super) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(super) const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;

// nfnetlink.h
pub(super) const NFGENMSG_LEN: usize = 4;
pub(super) const NFNETLINK_V0: u8 = 0;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;

// enum nf_tables_msg_types
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_DELRULE: u16 = 8;

// enum nft_table_attributes
pub(super) const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_TABLE_USERDATA` (Linux >= 5.13): where nft keeps a table's comment.
pub(super) const NFTA_TABLE_USERDATA: u16 = 6;
// enum nft_chain_attributes
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_USE: u16 = 6;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
// enum nft_hook_attributes
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
// enum nft_rule_attributes
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
// enum nft_list_attributes / nft_expr_attributes
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
// enum nft_data_attributes / nft_verdict_attributes
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
// enum nft_masq_attributes
pub(super) const NFTA_MASQ_FLAGS: u16 = 1;
// enum nft_immediate_attributes
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
// enum nft_bitwise_attributes
pub(super) const NFTA_BITWISE_SREG: u16 = 1;
pub(super) const NFTA_BITWISE_DREG: u16 = 2;
pub(super) const NFTA_BITWISE_LEN: u16 = 3;
pub(super) const NFTA_BITWISE_MASK: u16 = 4;
pub(super) const NFTA_BITWISE_XOR: u16 = 5;
pub(super) const NFTA_BITWISE_OP: u16 = 6;
// enum nft_cmp_attributes / nft_cmp_ops
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;
// enum nft_payload_attributes / nft_payload_bases
pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
// enum nft_meta_attributes / nft_meta_keys
pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFT_META_IIFNAME: u32 = 6;
pub(super) const NFT_META_NFPROTO: u32 = 15;
// enum nft_registers
pub(super) const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG_2: u32 = 2;
// linux/netfilter.h
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;
pub(super) const NF_INET_POST_ROUTING: u32 = 4;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_BRIDGE: u8 = 7;
pub(super) const NFPROTO_IPV6: u8 = 10;
// linux/netfilter_bridge.h
pub(super) const NF_BR_PRE_ROUTING: u32 = 0;

// libnftnl userdata TLV types (NFTNL_UDATA_RULE_COMMENT)
pub(super) const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// Longest table/chain name the kernel accepts (NFT_NAME_MAXLEN incl. NUL).
pub(super) const NFT_NAME_MAXLEN: usize = 256;
/// Max size of NFTA_RULE_USERDATA (NFT_USERDATA_MAXLEN).
pub(super) const NFT_USERDATA_MAXLEN: usize = 256;
/// Longest comment that fits one userdata TLV (2-byte header, NUL).
pub const MAX_COMMENT_LEN: usize = NFT_USERDATA_MAXLEN - 3;
pub(super) const IFNAMSIZ: usize = 16;

/// `srcnat` priority (NF_IP_PRI_NAT_SRC).
pub(super) const PRIO_SRCNAT: i32 = 100;
/// Priority of the MAC spoof-check chain (bridge `dstnat`, as the reference plugin).
pub(super) const PRIO_MACSPOOF: i32 = -300;

/// Netlink messages and attributes are 4-byte aligned.
pub(super) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `nlmsg_type` of an nf_tables message: subsystem in the high byte.
pub(super) const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

// --- sets, maps, elements and the expressions of the transaction API ---
// (linux/netfilter/nf_tables.h, enum nf_tables_msg_types continued)
pub(super) const NFT_MSG_NEWSET: u16 = 9;
pub(super) const NFT_MSG_DELSET: u16 = 11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
// enum nft_set_attributes
pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
pub(super) const NFTA_SET_DATA_TYPE: u16 = 6;
pub(super) const NFTA_SET_ID: u16 = 10;
// enum nft_set_flags
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
/// `NFT_DATA_VERDICT`: the data type of a verdict map's values.
pub(super) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
// enum nft_set_elem_list_attributes / nft_set_elem_attributes / flags
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
// enum nft_lookup_attributes / flags
pub(super) const NFTA_LOOKUP_SET: u16 = 1;
pub(super) const NFTA_LOOKUP_SREG: u16 = 2;
pub(super) const NFTA_LOOKUP_DREG: u16 = 3;
pub(super) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(super) const NFT_LOOKUP_F_INV: u32 = 0x1;
// enum nft_ct_attributes / nft_ct_keys
pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
pub(super) const NFT_CT_STATE: u32 = 0;
// enum nft_counter_attributes
pub(super) const NFTA_COUNTER_BYTES: u16 = 1;
pub(super) const NFTA_COUNTER_PACKETS: u16 = 2;
// enum nft_log_attributes
pub(super) const NFTA_LOG_PREFIX: u16 = 2;
// more nft_meta_keys, nft_cmp_ops, payload bases
pub(super) const NFT_META_OIFNAME: u32 = 7;
pub(super) const NFT_META_L4PROTO: u32 = 16;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
// enum nft_verdicts (negative, sent as u32)
pub(super) const NFT_JUMP: u32 = -3i32 as u32;
pub(super) const NFT_GOTO: u32 = -4i32 as u32;
pub(super) const NFT_RETURN: u32 = -5i32 as u32;
// linux/netfilter.h hooks
pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_INET_LOCAL_IN: u32 = 1;
pub(super) const NF_INET_FORWARD: u32 = 2;
pub(super) const NF_INET_LOCAL_OUT: u32 = 3;
// nftables' datatype ids (src/datatype.h), stored as the set's key type
// so that `nft list` prints the elements as addresses, names, ports.
pub(super) const NFT_TYPE_IPADDR: u32 = 7;
pub(super) const NFT_TYPE_IP6ADDR: u32 = 8;
pub(super) const NFT_TYPE_INET_SERVICE: u32 = 13;
pub(super) const NFT_TYPE_IFNAME: u32 = 41;
/// A concatenated key's type: each part's datatype id shifted in by
/// `TYPE_BITS` (nftables' `concat_subtype_add`), the first part highest.
pub(super) const NFT_TYPE_BITS: u32 = 6;
/// ARP's ethertype (`ether type arp`), and the offset of the sender's
/// IPv4 address in an Ethernet/IPv4 ARP packet (`arp saddr ip`).
pub(super) const ETH_P_ARP: u16 = 0x0806;
pub(super) const ARP_SPA_OFFSET: u32 = 14;
/// Offset of the EtherType in the Ethernet header.
pub(super) const ETHERTYPE_OFFSET: u32 = 12;
// enum nft_range_attributes / nft_range_ops
pub(super) const NFTA_RANGE_SREG: u16 = 1;
pub(super) const NFTA_RANGE_OP: u16 = 2;
pub(super) const NFTA_RANGE_FROM_DATA: u16 = 3;
pub(super) const NFTA_RANGE_TO_DATA: u16 = 4;
pub(super) const NFT_RANGE_EQ: u32 = 0;
pub(super) const NFT_RANGE_NEQ: u32 = 1;
pub(super) const NFTA_SET_USERDATA: u16 = 13;
// libnftnl set userdata TLV and nftables' byte orders
pub(super) const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
/// nft writes this (no single byte order) for a concatenated key.
pub(super) const BYTEORDER_INVALID: u32 = 0;
pub(super) const BYTEORDER_HOST_ENDIAN: u32 = 1;
pub(super) const BYTEORDER_BIG_ENDIAN: u32 = 2;
// Linux >= 6.3: delete if present, no ENOENT
pub(super) const NFT_MSG_DESTROYTABLE: u16 = 26;
pub(super) const NFT_MSG_DESTROYCHAIN: u16 = 27;
pub(super) const NFT_MSG_DESTROYSET: u16 = 29;
pub(super) const NFT_MSG_DESTROYSETELEM: u16 = 30;
// meta mark (load and set) and the lists read back for CHECK
pub(super) const NFTA_META_SREG: u16 = 3;
pub(super) const NFT_META_MARK: u32 = 3;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_META_PROTOCOL: u32 = 1;
