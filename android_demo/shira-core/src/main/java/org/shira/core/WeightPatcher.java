package org.shira.core;

import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** In-place patching of weight buffers the inference engine reads, with bit-exact restore (FORMAT.md §6).
 *
 *  Same algorithm as the Python runtime's WeightPatcher, so both produce the same bytes: for each buffer it
 *  remembers which entries differ from the base and their base values; a new state first restores those
 *  entries by overwrite (never by subtracting), then saves and writes the new ones. plan() validates and
 *  computes everything before commit() writes anything, so a refused combination leaves the weights as they were. */
public final class WeightPatcher {
    /** Where a torch weight lives in an engine buffer (MANIFEST.md "Placement layouts"). */
    public static final class Placement {
        public final String buffer;
        public final String layout; // identity | transpose2d | channels_last
        public final long[] torchShape;
        /** Folded weight (MANIFEST.md "Folded weights"): stored = torch weight * channelScale[c], c = output
         *  channel (torch dim 0); null when stored as it is. */
        public final float[] channelScale;

        public Placement(String buffer, String layout, long[] torchShape) { this(buffer, layout, torchShape, null); }

        public Placement(String buffer, String layout, long[] torchShape, float[] channelScale) {
            if (!layout.equals("identity") && !layout.equals("transpose2d") && !layout.equals("channels_last"))
                throw new IllegalArgumentException("unknown layout " + layout);
            if (channelScale != null && channelScale.length != torchShape[0])
                throw new IllegalArgumentException("channel_scale has " + channelScale.length + " values for "
                        + torchShape[0] + " output channels");
            this.buffer = buffer; this.layout = layout; this.torchShape = torchShape; this.channelScale = channelScale;
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

    private static final class Mapped { final int[] idx; final float[] delta; Mapped(int[] i, float[] d) { idx = i; delta = d; } }

    /** One buffer's planned state: sorted unique indices and the binary32 delta to add there. */
    public static final class Plan { final int[] idx; final float[] delta; Plan(int[] i, float[] d) { idx = i; delta = d; } }

    private final Map<String, FloatBuffer> buffers;
    private final Map<String, List<Placement>> placements; // torch name -> placements
    private final Map<String, int[]> idx = new HashMap<>();
    private final Map<String, float[]> saved = new HashMap<>();
    private final Map<String, Map<String, Mapped>> adapters = new LinkedHashMap<>(); // name -> buffer -> mapped

    public WeightPatcher(Map<String, FloatBuffer> buffers, Map<String, List<Placement>> placements) {
        this.buffers = buffers;
        this.placements = placements;
        for (String b : buffers.keySet()) { idx.put(b, new int[0]); saved.put(b, new float[0]); }
    }

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
                for (int i = 0; i < m.length; i++) { int o = (int) (long) order[i]; mi[i] = (int) m[o]; dv[i] = p.storedDelta(t.indices[o], t.values[o]); }
                mapped.put(p.buffer, new Mapped(mi, dv));
            }
        }
        adapters.put(name, mapped);
    }

    /** Compute the state for {adapter: scale}; throws (and writes nothing) if it is not allowed. */
    public Map<String, Plan> plan(Map<String, Double> scales) throws AdapterFormatException {
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
            int[] ix;
            float[] d;
            if (parts.size() == 1) {
                Mapped m = (Mapped) parts.get(0)[0];
                double scale = (Double) parts.get(0)[1];
                ix = m.idx;
                d = new float[ix.length];
                for (int i = 0; i < ix.length; i++) d[i] = scale == 1.0 ? m.delta[i] : (float) ((double) m.delta[i] * scale);
            } else { // union of indices; scaled deltas summed in binary64 in adapter order, rounded once
                java.util.TreeMap<Integer, Double> sum = new java.util.TreeMap<>();
                for (Object[] p : parts) {
                    Mapped m = (Mapped) p[0];
                    double scale = (Double) p[1];
                    for (int i = 0; i < m.idx.length; i++) sum.merge(m.idx[i], (double) m.delta[i] * scale, Double::sum);
                }
                ix = new int[sum.size()];
                d = new float[sum.size()];
                int i = 0;
                for (Map.Entry<Integer, Double> e : sum.entrySet()) { ix[i] = e.getKey(); d[i] = (float) (double) e.getValue(); i++; }
            }
            FloatBuffer buf = buffers.get(b);
            for (int i = 0; i < ix.length; i++) {
                if (!Float.isFinite(baseValue(b, buf, ix[i]) + d[i]))
                    throw new AdapterFormatException("buffer " + b + ": the requested combination produces non-finite weights");
            }
            plans.put(b, new Plan(ix, d));
        }
        return plans;
    }

    private float baseValue(String b, FloatBuffer buf, int at) {
        int pos = Arrays.binarySearch(idx.get(b), at);
        return pos >= 0 ? saved.get(b)[pos] : buf.get(at);
    }

    /** Restore, save, write. */
    public void commit(Map<String, Plan> plans) {
        for (Map.Entry<String, Plan> e : plans.entrySet()) {
            String b = e.getKey();
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

    public void reset() { commit(emptyPlans()); }

    private Map<String, Plan> emptyPlans() {
        Map<String, Plan> m = new LinkedHashMap<>();
        for (String b : buffers.keySet()) m.put(b, new Plan(new int[0], new float[0]));
        return m;
    }

    public int patchedEntries() {
        int n = 0;
        for (int[] i : idx.values()) n += i.length;
        return n;
    }
}
