package org.shira.core;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.LinkedHashSet;

/** In-place patching of weight buffers the inference engine reads, with bit-exact restore (FORMAT.md §6).
 *
 *  Same algorithm as the Python runtime's WeightPatcher, so both produce the same bytes: for each buffer it
 *  remembers which entries differ from the base and their base values; a new state first restores those
 *  entries by overwrite (never by subtracting), then saves and writes the new ones. plan() validates and
 *  computes everything before commit() writes anything, so a refused combination leaves the weights as they were.
 *
 *  Quantized buffers (docs/QUANTIZATION.md) hold integers in a ByteBuffer: the fused delta of each entry is
 *  re-quantized once with the base's scale, u' = z + clamp(rint((u - z) + d / s)), and whole bytes are written
 *  (at 4 bits a byte's other nibble keeps its base value unless it is patched too). */
public final class WeightPatcher {
    /** A quantized placement's integers (MANIFEST.md "quant"): bits 4 or 8, blocks of `block` inputs, and the
     *  float32 scales, N * (K / block) of them (an ExecuTorch program's bfloat16 or per-channel scales widened and
     *  repeated by the caller, docs/QUANTIZATION.md). `signed` (8 bits only, ExecuTorch/XNNPACK): each byte holds
     *  the two's complement u - z, that is u XOR 0x80. */
    public static final class Quant {
        public final int bits, block;
        public final float[] scales;
        public final boolean signed;

        public Quant(int bits, int block, float[] scales) { this(bits, block, scales, false); }

        public Quant(int bits, int block, float[] scales, boolean signed) {
            if (bits != 4 && bits != 8) throw new IllegalArgumentException("quant bits must be 4 or 8, got " + bits);
            if (block < 16 || Integer.bitCount(block) != 1) throw new IllegalArgumentException("bad block " + block);
            if (signed && bits != 8) throw new IllegalArgumentException("signed storage is for 8 bits only");
            this.bits = bits; this.block = block; this.scales = scales; this.signed = signed;
        }

        int zeroPoint() { return 1 << (bits - 1); }

        /** XOR between a stored byte and its unsigned entry. */
        int flip() { return signed ? 0x80 : 0; }
    }

    /** Where a torch weight lives in an engine buffer (MANIFEST.md "Placement layouts"). */
    public static final class Placement {
        public final String buffer;
        public final String layout; // identity | transpose2d | channels_last
        public final long[] torchShape;
        /** Folded weight (MANIFEST.md "Folded weights"): stored = torch weight * channelScale[c], c = output
         *  channel (torch dim 0); null when stored as it is. */
        public final float[] channelScale;
        /** A quantized placement (the matrix [N, K] of its entries in torch order, identity layout; a conv's
         *  [N, C, kh, kw] is [N, C*kh*kw]), or null for float32. */
        public final Quant quant;

        public Placement(String buffer, String layout, long[] torchShape) { this(buffer, layout, torchShape, null); }

        /** A quantized placement: a weight [N, ...] stored as integers in torch order, K = the product of the
         *  dimensions after the first. */
        public Placement(String buffer, long[] torchShape, Quant quant) {
            long k = torchShape.length < 2 ? 0 : Codings.numel(torchShape) / torchShape[0];
            if (torchShape.length < 2 || k % quant.block != 0
                    || (long) quant.scales.length != torchShape[0] * (k / quant.block))
                throw new IllegalArgumentException("a quantized placement needs [N, ...] with K (the product of the "
                        + "other dimensions) a multiple of the block, and N * K / block scales");
            this.buffer = buffer; this.layout = "identity"; this.torchShape = torchShape; this.channelScale = null;
            this.quant = quant;
        }

        public Placement(String buffer, String layout, long[] torchShape, float[] channelScale) {
            if (!layout.equals("identity") && !layout.equals("transpose2d") && !layout.equals("channels_last"))
                throw new IllegalArgumentException("unknown layout " + layout);
            if (channelScale != null && channelScale.length != torchShape[0])
                throw new IllegalArgumentException("channel_scale has " + channelScale.length + " values for "
                        + torchShape[0] + " output channels");
            this.buffer = buffer; this.layout = layout; this.torchShape = torchShape; this.channelScale = channelScale;
            this.quant = null;
        }

        /** The quantization scale of torch entry f. */
        float entryScale(long f) {
            long cols = Codings.numel(torchShape) / torchShape[0];
            return quant.scales[(int) ((f / cols) * (cols / quant.block) + (f % cols) / quant.block)];
        }

        /** An adapter value for torch entry f -> the delta for the stored weight: binary64 product, rounded once. */
        float storedDelta(long f, float v) {
            if (channelScale == null) return v;
            long perChannel = Codings.numel(torchShape) / torchShape[0];
            return (float) ((double) v * (double) channelScale[(int) (f / perChannel)]);
        }

        long map(long f) {
            long rows = torchShape[0], cols = Codings.numel(torchShape) / rows;
            switch (layout) {
                case "identity": return f;
                case "transpose2d": return (f % cols) * rows + f / cols;
                default: {
                    long c = torchShape[1], rest = cols / c;
                    long outer = f / (c * rest), inner = f % (c * rest);
                    return outer * (c * rest) + (inner % rest) * c + inner / rest;
                }
            }
        }
    }

    private static final class Mapped {
        final int[] idx; final float[] delta; final float[] qscale; // qscale: each entry's scale (quantized buffers)
        Mapped(int[] i, float[] d, float[] q) { idx = i; delta = d; qscale = q; }
    }

    /** One buffer's planned state: sorted unique indices and the binary32 delta to add there; for a quantized
     *  buffer, sorted unique byte indices and their new bytes. */
    public static final class Plan {
        final int[] idx; final float[] delta; final byte[] bytes; final int clamped;
        Plan(int[] i, float[] d) { idx = i; delta = d; bytes = null; clamped = 0; }
        Plan(int[] i, byte[] b, int c) { idx = i; delta = null; bytes = b; clamped = c; }
    }

    private final Map<String, FloatBuffer> buffers;
    private final Map<String, ByteBuffer> quantized; // buffer -> its integers
    private final Map<String, Quant> quantOf = new HashMap<>();
    private final Map<String, byte[]> savedBytes = new HashMap<>();
    private int clamped;
    private final Map<String, List<Placement>> placements; // torch name -> placements
    private final Map<String, int[]> idx = new HashMap<>();
    private final Map<String, float[]> saved = new HashMap<>();
    private final Map<String, Map<String, Mapped>> adapters = new LinkedHashMap<>(); // name -> buffer -> mapped

    public WeightPatcher(Map<String, FloatBuffer> buffers, Map<String, List<Placement>> placements) {
        this(buffers, new LinkedHashMap<>(), placements);
    }

    /** `quantized`: buffer name -> the bytes of a quantized buffer (its placements carry their Quant). */
    public WeightPatcher(Map<String, FloatBuffer> buffers, Map<String, ByteBuffer> quantized,
                         Map<String, List<Placement>> placements) {
        this.buffers = buffers;
        this.quantized = quantized;
        this.placements = placements;
        for (String b : buffers.keySet()) { idx.put(b, new int[0]); saved.put(b, new float[0]); }
        for (String b : quantized.keySet()) { idx.put(b, new int[0]); savedBytes.put(b, new byte[0]); }
        for (List<Placement> ps : placements.values())
            for (Placement p : ps) {
                if (p.quant != null && !quantized.containsKey(p.buffer))
                    throw new IllegalArgumentException("quantized placement " + p.buffer + " has no byte buffer");
                if (p.quant != null) quantOf.put(p.buffer, p.quant);
            }
    }

    /** Entries of the active state clamped to their integer range (quantized buffers). */
    public int clamped() { return clamped; }

    /** Register a validated adapter: its indices are mapped to each placement's layout once, here. */
    public void load(String name, AdapterBlob blob) throws AdapterFormatException {
        Map<String, Mapped> mapped = new LinkedHashMap<>();
        for (AdapterBlob.Tensor t : blob.tensors.values()) {
            List<Placement> ps = placements.get(t.target);
            if (ps == null) throw new AdapterFormatException(name + ": tensor " + t.target + " is not patchable in this base");
            for (Placement p : ps) {
                Long[] order = new Long[t.indices.length];
                long[] m = new long[t.indices.length];
                for (int i = 0; i < m.length; i++) { m[i] = p.map(t.indices[i]); order[i] = (long) i; }
                if (!p.layout.equals("identity")) Arrays.sort(order, (a, b) -> Long.compare(m[(int) (long) a], m[(int) (long) b]));
                int[] mi = new int[m.length];
                float[] dv = new float[m.length];
                float[] qs = p.quant == null ? null : new float[m.length];
                for (int i = 0; i < m.length; i++) {
                    int o = (int) (long) order[i]; mi[i] = (int) m[o]; dv[i] = p.storedDelta(t.indices[o], t.values[o]);
                    if (qs != null) qs[i] = p.entryScale(t.indices[o]);
                }
                mapped.put(p.buffer, new Mapped(mi, dv, qs));
            }
        }
        adapters.put(name, mapped);
    }

    /** How entries that several adapters touch combine (FORMAT.md §6.1); all equal the scaled delta elsewhere. */
    public static final List<String> RULES = Arrays.asList("sum", "mean", "ties", "magnitude");

    /** Compute the state for {adapter: scale} with the "sum" rule. */
    public Map<String, Plan> plan(Map<String, Double> scales) throws AdapterFormatException {
        return plan(scales, "sum");
    }

    /** Compute the state for {adapter: scale} (iterated in adapter order) combined by `rule`; throws (and
     *  writes nothing) if it is not allowed. */
    public Map<String, Plan> plan(Map<String, Double> scales, String rule) throws AdapterFormatException {
        if (!RULES.contains(rule)) throw new AdapterFormatException("unknown merge rule " + rule + " (known: " + RULES + ")");
        Map<String, List<Object[]>> terms = new LinkedHashMap<>();
        for (Map.Entry<String, Double> s : scales.entrySet()) {
            Map<String, Mapped> m = adapters.get(s.getKey());
            if (m == null) throw new AdapterFormatException("adapter " + s.getKey() + " is not loaded");
            if (!Double.isFinite(s.getValue())) throw new AdapterFormatException("adapter " + s.getKey() + ": scale is not finite");
            for (Map.Entry<String, Mapped> e : m.entrySet())
                terms.computeIfAbsent(e.getKey(), k -> new ArrayList<>()).add(new Object[]{e.getValue(), s.getValue()});
        }
        Map<String, Plan> plans = new LinkedHashMap<>();
        for (String b : buffers.keySet()) {
            List<Object[]> parts = terms.get(b);
            if (parts == null) { plans.put(b, new Plan(new int[0], new float[0])); continue; }
            Fused f = fuseTerms(parts, rule);
            FloatBuffer buf = buffers.get(b);
            for (int i = 0; i < f.idx.length; i++) {
                if (!Float.isFinite(baseValue(b, buf, f.idx[i]) + f.delta[i]))
                    throw new AdapterFormatException("buffer " + b + ": the requested combination produces non-finite weights");
            }
            plans.put(b, new Plan(f.idx, f.delta));
        }
        for (String b : quantized.keySet()) {
            List<Object[]> parts = terms.get(b);
            if (parts == null) { plans.put(b, new Plan(new int[0], new byte[0], 0)); continue; }
            plans.put(b, requantize(b, fuseTerms(parts, rule)));
        }
        return plans;
    }

    private static final class Fused {
        final int[] idx; final float[] delta; final float[] qscale;
        Fused(int[] i, float[] d, float[] q) { idx = i; delta = d; qscale = q; }
    }

    /** One buffer's terms -> sorted unique indices and their binary32 deltas (FORMAT.md §6), with entry scales. */
    private static Fused fuseTerms(List<Object[]> parts, String rule) throws AdapterFormatException {
        if (parts.size() == 1) {
            Mapped m = (Mapped) parts.get(0)[0];
            double scale = (Double) parts.get(0)[1];
            float[] d = new float[m.idx.length];
            for (int i = 0; i < d.length; i++) d[i] = scale == 1.0 ? m.delta[i] : (float) ((double) m.delta[i] * scale);
            return new Fused(m.idx, d, m.qscale);
        }
        // union of indices; each entry's scaled deltas (binary64, in adapter order) combined by the rule, rounded once
        java.util.TreeMap<Integer, List<Double>> terms = new java.util.TreeMap<>();
        Map<Integer, Float> qs = new HashMap<>();
        for (Object[] p : parts) {
            Mapped m = (Mapped) p[0];
            double scale = (Double) p[1];
            for (int i = 0; i < m.idx.length; i++) {
                double t = (double) m.delta[i] * scale;
                if (!Double.isFinite(t))
                    throw new AdapterFormatException("the requested combination produces non-finite weights");
                terms.computeIfAbsent(m.idx[i], k -> new ArrayList<>(2)).add(t);
                if (m.qscale != null) qs.put(m.idx[i], m.qscale[i]);
            }
        }
        int[] ix = new int[terms.size()];
        float[] d = new float[terms.size()];
        float[] q = qs.isEmpty() ? null : new float[terms.size()];
        int i = 0;
        for (Map.Entry<Integer, List<Double>> e : terms.entrySet()) {
            ix[i] = e.getKey(); d[i] = (float) merge(e.getValue(), rule);
            if (q != null) q[i] = qs.get(e.getKey());
            i++;
        }
        return new Fused(ix, d, q);
    }

    /** FORMAT.md §6.1: one entry's scaled deltas, in adapter order -> its binary64 delta. */
    static double merge(List<Double> ts, String rule) {
        switch (rule) {
            case "sum": return total(ts);
            case "mean": return total(ts) / ts.size();
            case "ties": {
                double s = total(ts);
                List<Double> kept = new ArrayList<>();
                for (double x : ts) if ((x > 0 && s > 0) || (x < 0 && s < 0)) kept.add(x);
                return kept.isEmpty() ? 0.0 : total(kept) / kept.size();
            }
            default: { // magnitude: the largest |term|, the first among equals
                double best = ts.get(0);
                for (double x : ts) if (Math.abs(x) > Math.abs(best)) best = x;
                return best;
            }
        }
    }

    private static double total(List<Double> ts) {
        double d = ts.get(0);
        for (int k = 1; k < ts.size(); k++) d += ts.get(k);
        return d;
    }

    /** Entries re-quantized from the base's integers with their scales -> the bytes that hold them. */
    private Plan requantize(String b, Fused f) throws AdapterFormatException {
        Quant q = quantOf.get(b);
        int z = q.zeroPoint();
        java.util.TreeMap<Integer, Integer> bytes = new java.util.TreeMap<>();
        int clampedHere = 0;
        for (int i = 0; i < f.idx.length; i++) {
            if (!Float.isFinite(f.delta[i]))
                throw new AdapterFormatException("buffer " + b + ": the requested combination produces non-finite weights");
            int e = f.idx[i];
            int at = q.bits == 8 ? e : e >> 1;
            int cur = bytes.containsKey(at) ? bytes.get(at) : baseByte(b, at);
            int shift = q.bits == 8 ? 0 : 4 * (e & 1);
            int mask = q.bits == 8 ? 0xFF : 0x0F;
            // the base's entry: only the other nibble of `cur` may be new
            int u = ((cur >> shift) & mask) ^ q.flip();
            double t = Math.rint((double) (u - z) + (double) f.delta[i] / (double) f.qscale[i]);
            if (t < -z || t > z - 1) { clampedHere++; t = Math.max(-z, Math.min(z - 1, t)); }
            int nu = ((int) t + z) ^ q.flip();
            bytes.put(at, (cur & ~(mask << shift) & 0xFF) | (nu << shift));
        }
        int[] ix = new int[bytes.size()];
        byte[] v = new byte[bytes.size()];
        int i = 0;
        for (Map.Entry<Integer, Integer> e : bytes.entrySet()) { ix[i] = e.getKey(); v[i] = (byte) (int) e.getValue(); i++; }
        return new Plan(ix, v, clampedHere);
    }

    private int baseByte(String b, int at) {
        int pos = Arrays.binarySearch(idx.get(b), at);
        return (pos >= 0 ? savedBytes.get(b)[pos] : quantized.get(b).get(at)) & 0xFF;
    }

    private float baseValue(String b, FloatBuffer buf, int at) {
        int pos = Arrays.binarySearch(idx.get(b), at);
        return pos >= 0 ? saved.get(b)[pos] : buf.get(at);
    }

    /** The buffers a commit of `plans` writes: those patched now or by the plan. An engine that packed them at load
     *  (ExecuTorch conv weights: `reload: true`) must reload after the commit. */
    public Set<String> changedBy(Map<String, Plan> plans) {
        Set<String> out = new LinkedHashSet<>();
        for (Map.Entry<String, Plan> e : plans.entrySet())
            if (e.getValue().idx.length > 0 || idx.get(e.getKey()).length > 0) out.add(e.getKey());
        return out;
    }

    /** Per buffer, the entries a commit of `plans` writes (sorted, unique): those patched now, which it restores,
     *  and those the plans patch; a buffer it leaves alone is absent (a quantized buffer's entries are its byte
     *  indices). Ask before the commit. A caller that keeps a second copy of the weights (BakedWeights: ONNX
     *  Runtime's packed copies in a baked file) writes these entries' values there after the commit. */
    public Map<String, int[]> touchedBy(Map<String, Plan> plans) {
        Map<String, int[]> out = new LinkedHashMap<>();
        for (Map.Entry<String, Plan> e : plans.entrySet()) {
            int[] a = idx.get(e.getKey()), b = e.getValue().idx;
            int[] u = new int[a.length + b.length];
            int n = 0, i = 0, j = 0;
            while (i < a.length || j < b.length) {
                int v = j == b.length || (i < a.length && a[i] < b[j]) ? a[i++] : b[j++];
                if (n == 0 || u[n - 1] != v) u[n++] = v;
            }
            if (n > 0) out.put(e.getKey(), Arrays.copyOf(u, n));
        }
        return out;
    }

    /** Restore, save, write. */
    public void commit(Map<String, Plan> plans) {
        clamped = 0;
        for (Map.Entry<String, Plan> e : plans.entrySet()) {
            String b = e.getKey();
            if (e.getValue().bytes != null) {
                ByteBuffer buf = quantized.get(b);
                int[] old = idx.get(b);
                byte[] oldSaved = savedBytes.get(b);
                for (int i = 0; i < old.length; i++) buf.put(old[i], oldSaved[i]);
                Plan p = e.getValue();
                byte[] base = new byte[p.idx.length];
                for (int i = 0; i < p.idx.length; i++) { base[i] = buf.get(p.idx[i]); buf.put(p.idx[i], p.bytes[i]); }
                idx.put(b, p.idx);
                savedBytes.put(b, base);
                clamped += p.clamped;
                continue;
            }
            FloatBuffer buf = buffers.get(b);
            int[] old = idx.get(b);
            float[] oldSaved = saved.get(b);
            for (int i = 0; i < old.length; i++) buf.put(old[i], oldSaved[i]);
            Plan p = e.getValue();
            float[] base = new float[p.idx.length];
            for (int i = 0; i < p.idx.length; i++) {
                base[i] = buf.get(p.idx[i]);
                buf.put(p.idx[i], base[i] + p.delta[i]);
            }
            idx.put(b, p.idx);
            saved.put(b, base);
        }
    }

    public void fuse(Map<String, Double> scales) throws AdapterFormatException { commit(plan(scales)); }

    public void fuse(Map<String, Double> scales, String rule) throws AdapterFormatException { commit(plan(scales, rule)); }

    public void reset() { commit(emptyPlans()); }

    private Map<String, Plan> emptyPlans() {
        Map<String, Plan> m = new LinkedHashMap<>();
        for (String b : buffers.keySet()) m.put(b, new Plan(new int[0], new float[0]));
        for (String b : quantized.keySet()) m.put(b, new Plan(new int[0], new byte[0], 0));
        return m;
    }

    public int patchedEntries() {
        int n = 0;
        for (int[] i : idx.values()) n += i.length;
        return n;
    }
}
