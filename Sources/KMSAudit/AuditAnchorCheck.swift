public import KMSCore

/// Checks the audit chains of replicas against the checkpoints they anchored in the shared state store: a replica with
/// anchors must have its log among the chains; every anchored checkpoint within a chain's range must be there, byte
/// for byte (its line's hash); and no anchored checkpoint may lie beyond where a replica's chain ends. That catches
/// what a chain alone cannot: a whole replica's log deleted, or a log rolled back to an earlier, valid state. The
/// chains are `AuditVerifier` reports (one per replica, its files oldest first), which carry the checkpoint hashes.
public enum AuditAnchorCheck {
    public struct Result: Sendable {
        public var problems: [String] = []
        public var notes: [String] = []
        /// Anchored checkpoints matched.
        public var matched = 0
        public var ok: Bool { problems.isEmpty }
    }

    public static func check(chains: [AuditVerifier.Report], anchors: [AuditAnchor]) -> Result {
        var result = Result()
        let reports = Dictionary(chains.map { ($0.replica ?? "", $0) }, uniquingKeysWith: { first, _ in first })
        let anchored = Dictionary(grouping: anchors, by: \.replica)
        for replica in Set(anchored.keys).union(reports.keys).sorted() {
            let label = replica.isEmpty ? "the log without a replica id" : "replica '\(replica)'"
            let mine = (anchored[replica] ?? []).sorted { $0.seq < $1.seq }
            guard let report = reports[replica] else {
                result.problems.append("\(label): \(mine.count) checkpoint(s) up to seq \(mine.last?.seq ?? 0) are anchored in the state "
                                       + "store, but none of the files given is its log (deleted, or not given)")
                continue
            }
            guard report.ok, let first = report.firstSeq, let last = report.lastSeq else {
                result.notes.append("\(label): not compared with its anchors (its chain did not verify)")
                continue
            }
            if mine.isEmpty {
                result.notes.append("\(label): no checkpoint of it is anchored in the state store")
                continue
            }
            if let beyond = mine.last, beyond.seq > last {
                result.problems.append("\(label): its files end at seq \(last), but a checkpoint at seq \(beyond.seq) is anchored "
                                       + "(the log was rolled back or cut off)")
            }
            var older = 0
            for anchor in mine where anchor.seq <= last {
                guard anchor.seq >= first else {
                    older += 1
                    continue
                }
                if report.checkpointHashes[anchor.seq] == anchor.lineHash {
                    result.matched += 1
                } else {
                    result.problems.append("\(label): the record at seq \(anchor.seq) is not the checkpoint anchored there (rewritten)")
                }
            }
            if older > 0 {
                result.notes.append("\(label): \(older) anchored checkpoint(s) before seq \(first) not checked (older files not given)")
            }
        }
        return result
    }
}
