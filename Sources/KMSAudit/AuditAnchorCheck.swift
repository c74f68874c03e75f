import Crypto
public import Foundation
public import KMSCore

/// Checks the audit files of replicas against the checkpoints they anchored in the shared state store: a replica with
/// anchors must have its log among the files; every anchored checkpoint within the files' range must be there,
/// byte for byte (its line's hash); and no anchored checkpoint may lie beyond where a replica's files end. That
/// catches what the chain alone cannot: a whole replica's log deleted, or a log rolled back to an earlier, valid state.
/// Each file's own chain and signatures are `AuditVerifier`'s job.
public enum AuditAnchorCheck {
    public struct Result: Sendable {
        public var problems: [String] = []
        public var notes: [String] = []
        /// Replicas found in the files, and anchored checkpoints matched.
        public var replicas: [String] = []
        public var matched = 0
        public var ok: Bool { problems.isEmpty }
    }

    /// What one replica's files hold: checkpoint line hashes by seq, and the seq range.
    private struct Chain {
        var checkpoints: [UInt64: String] = [:]
        var first = UInt64.max
        var last: UInt64 = 0
    }

    /// `files`: each file's name and contents.
    public static func check(files: [(name: String, contents: Data)], anchors: [AuditAnchor]) -> Result {
        var result = Result()
        var chains: [String: Chain] = [:]
        for (name, contents) in files {
            var replicaOfFile: String?
            for line in contents.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
                guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
                      let seq = (object["seq"] as? NSNumber)?.uint64Value else {
                    result.problems.append("\(name): a line that is not an audit record")
                    break
                }
                let replica = object["replica"] as? String ?? ""
                if let known = replicaOfFile, known != replica {
                    result.problems.append("\(name): records of two replicas ('\(known)' and '\(replica)') in one file")
                    break
                }
                replicaOfFile = replica
                var chain = chains[replica] ?? Chain()
                chain.first = min(chain.first, seq)
                chain.last = max(chain.last, seq)
                if object["type"] as? String == AuditEvent.Kind.checkpoint.rawValue {
                    chain.checkpoints[seq] = Hex.encode(SHA256.hash(data: line))
                }
                chains[replica] = chain
            }
        }
        result.replicas = chains.keys.sorted()
        let anchored = Dictionary(grouping: anchors, by: \.replica)
        for replica in Set(anchored.keys).union(chains.keys).sorted() {
            let label = replica.isEmpty ? "the log without a replica id" : "replica '\(replica)'"
            let mine = (anchored[replica] ?? []).sorted { $0.seq < $1.seq }
            guard let chain = chains[replica] else {
                result.problems.append("\(label): \(mine.count) checkpoint(s) up to seq \(mine.last?.seq ?? 0) are anchored in the state "
                                       + "store, but none of the files given is its log (deleted, or not given)")
                continue
            }
            if mine.isEmpty {
                result.notes.append("\(label): no checkpoint of it is anchored in the state store")
                continue
            }
            if let beyond = mine.last, beyond.seq > chain.last {
                result.problems.append("\(label): its files end at seq \(chain.last), but a checkpoint at seq \(beyond.seq) is anchored "
                                       + "(the log was rolled back or cut off)")
            }
            var older = 0
            for anchor in mine where anchor.seq <= chain.last {
                guard anchor.seq >= chain.first else {
                    older += 1
                    continue
                }
                if chain.checkpoints[anchor.seq] == anchor.lineHash {
                    result.matched += 1
                } else {
                    result.problems.append("\(label): the record at seq \(anchor.seq) is not the checkpoint anchored there (rewritten)")
                }
            }
            if older > 0 {
                result.notes.append("\(label): \(older) anchored checkpoint(s) before seq \(chain.first) not checked (older files not given)")
            }
        }
        return result
    }
}
