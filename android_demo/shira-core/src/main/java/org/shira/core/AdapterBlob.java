package org.shira.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.CRC32;

/** Reader for SHiRA adapter blobs, format version 1, written from docs/FORMAT.md alone.
 *  Everything is validated (§7) before a caller can patch anything. */
public final class AdapterBlob {
    public static final String FORMAT = "shira-adapter";
    public static final String VERSION = "1";

    /** One decoded tensor: torch flat indices (strictly increasing) and binary32 deltas. */
    public static final class Tensor {
        public final String target;
        public final long[] shape;
        public final long[] indices;
        public final float[] values;
        public final String indexCoding;
        public final String valueCoding;

        Tensor(String target, long[] shape, long[] indices, float[] values, String ic, String vc) {
            this.target = target; this.shape = shape; this.indices = indices; this.values = values;
            this.indexCoding = ic; this.valueCoding = vc;
        }
    }

    public final String name;
    public final String baseFingerprint;
    public final Map<String, Tensor> tensors;

    private AdapterBlob(String name, String fp, Map<String, Tensor> tensors) {
        this.name = name; this.baseFingerprint = fp; this.tensors = tensors;
    }

    /** Shapes of the base's patchable tensors (torch name -> shape), or null to skip that check. */
    public static AdapterBlob read(byte[] file, String source, String expectedFingerprint,
                                   Map<String, long[]> baseShapes) throws AdapterFormatException {
        Safetensors st = Safetensors.parse(file, source);
        Map<String, String> meta = st.metadata;
        if (!FORMAT.equals(meta.get("shira.format")))
            throw fail(source, "not a SHiRA adapter blob (shira.format=" + meta.get("shira.format") + ")");
        if (!VERSION.equals(meta.get("shira.version")))
            throw fail(source, "unsupported format version " + meta.get("shira.version") + "; this reader reads version 1");
        String name = meta.getOrDefault("shira.name", "");
        String fp = meta.getOrDefault("shira.base_fingerprint", "");
        if (expectedFingerprint != null && !expectedFingerprint.equals(fp))
            throw fail(source, "made for another base (" + fp + "), this base is " + expectedFingerprint);
        String tensorsJson = meta.get("shira.tensors");
        long headerCrc, dataCrc;
        try {
            headerCrc = Long.parseLong(meta.get("shira.header_crc32"));
            dataCrc = Long.parseLong(meta.get("shira.data_crc32"));
        } catch (RuntimeException e) {
            throw fail(source, "corrupt metadata: " + e);
        }
        if (tensorsJson == null) throw fail(source, "corrupt metadata: no shira.tensors");
        CRC32 h = new CRC32();
        h.update((name + "\n" + fp + "\n" + tensorsJson).getBytes(StandardCharsets.UTF_8));
        if (h.getValue() != headerCrc) throw fail(source, "checksum mismatch over the header (edited or corrupt metadata)");
        CRC32 d = new CRC32();
        d.update(file, st.dataStart, file.length - st.dataStart);
        if (d.getValue() != dataCrc) throw fail(source, "checksum mismatch over the data region (corrupt or truncated file)");
        Object entries;
        try {
            entries = Json.parse(tensorsJson);
        } catch (IllegalArgumentException e) {
            throw fail(source, "corrupt tensor table");
        }
        if (!(entries instanceof List)) throw fail(source, "corrupt tensor table");
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Object e : (List<?>) entries) {
            Tensor t = readTensor(e, st, file, source, baseShapes);
            if (out.containsKey(t.target)) throw fail(source, "tensor " + t.target + ": listed twice");
            out.put(t.target, t);
        }
        return new AdapterBlob(name, fp, out);
    }

    static AdapterFormatException fail(String source, String msg) {
        return new AdapterFormatException(source + ": " + msg);
    }

    private static Tensor readTensor(Object o, Safetensors st, byte[] file, String source,
                                     Map<String, long[]> baseShapes) throws AdapterFormatException {
        if (!(o instanceof Map)) throw fail(source, "corrupt tensor entry");
        Map<?, ?> e = (Map<?, ?>) o;
        String target = str(e.get("target")), ic = str(e.get("index_coding")), vc = str(e.get("value_coding"));
        String vkey = str(e.get("value_key"));
        Object ikeyO = e.get("index_key"), skeyO = e.get("scale_key");
        Object shapeO = e.get("shape"), nnzO = e.get("nnz"), crcO = e.get("crc32");
        Object ip = e.containsKey("index_params") && e.get("index_params") != null ? e.get("index_params") : new LinkedHashMap<>();
        Object vp = e.containsKey("value_params") && e.get("value_params") != null ? e.get("value_params") : new LinkedHashMap<>();
        boolean ok = target != null && ic != null && vc != null && vkey != null
                && (ikeyO == null || ikeyO instanceof String) && (skeyO == null || skeyO instanceof String)
                && shapeO instanceof List && nnzO instanceof Long && crcO instanceof Long
                && ip instanceof Map && vp instanceof Map;
        long[] shape = null;
        if (ok) {
            List<?> sl = (List<?>) shapeO;
            shape = new long[sl.size()];
            for (int k = 0; k < shape.length; k++) {
                if (!(sl.get(k) instanceof Long)) { ok = false; break; }
                shape[k] = (Long) sl.get(k);
            }
        }
        if (!ok) throw fail(source, "corrupt tensor entry " + truncate(String.valueOf(o)));
        String where = "tensor " + target;
        String ikey = (String) ikeyO, skey = (String) skeyO;
        long nnz = (Long) nnzO;
        if (baseShapes != null) {
            long[] base = baseShapes.get(target);
            if (base == null) throw fail(source, where + ": not a patchable tensor of this base");
            if (!java.util.Arrays.equals(base, shape))
                throw fail(source, where + ": shape " + java.util.Arrays.toString(shape) + " does not match the base's "
                        + java.util.Arrays.toString(base));
        }
        if (!Codings.INDEX.contains(ic) || !Codings.VALUE.contains(vc))
            throw fail(source, where + ": unknown index coding " + ic + " or value coding " + vc);
        long numel = 1;
        for (long s : shape) numel *= s;
        if (shape.length < 1 || nnz < 0 || nnz > numel || nnz > Integer.MAX_VALUE)
            throw fail(source, where + ": nnz " + nnz + " impossible for its shape");
        // buffers: dtype and length
        Map<String, Object[]> wanted = new LinkedHashMap<>(); // key -> {dtype, count or null}
        if (!ic.equals("seed")) wanted.put(ikey, new Object[]{ic.equals("flat-u32") || ic.equals("rowcol") ? "U32" : "U8", null});
        wanted.put(vkey, new Object[]{Codings.valueDtype(vc), nnz});
        if (vc.equals("int8-row")) wanted.put(skey, new Object[]{"F32", shape[0]});
        Map<String, byte[]> raw = new LinkedHashMap<>();
        for (Map.Entry<String, Object[]> w : wanted.entrySet()) {
            Safetensors.Entry te = w.getKey() == null ? null : st.tensors.get(w.getKey());
            Object want = w.getValue()[1];
            if (te == null || !te.dtype.equals(w.getValue()[0]) || te.shape.length != 1
                    || (want != null && te.shape[0] != (Long) want))
                throw fail(source, where + ": buffer " + w.getKey() + " missing or not " + w.getValue()[0]);
            raw.put(w.getKey(), st.bytes(file, te));
        }
        CRC32 crc = new CRC32();
        for (String key : new String[]{ikey, vkey, skey})
            if (key != null && raw.containsKey(key)) crc.update(raw.get(key));
        if (crc.getValue() != (Long) crcO) throw fail(source, where + ": checksum mismatch");
        long[] idx;
        float[] vals;
        try {
            idx = Codings.decodeIndices(ic, (Map<?, ?>) ip, raw.get(ikey), (int) nnz, shape);
            vals = Codings.decodeValues(vc, (Map<?, ?>) vp, raw.get(vkey), raw.get(skey), idx, shape);
        } catch (IllegalArgumentException ex) {
            throw fail(source, where + ": " + ex.getMessage());
        }
        int bad = 0;
        for (float v : vals) if (!Float.isFinite(v)) bad++;
        if (bad > 0) throw fail(source, where + ": " + bad + " non-finite values (NaN/inf)");
        return new Tensor(target, shape, idx, vals, ic, vc);
    }

    private static String str(Object o) { return o instanceof String ? (String) o : null; }

    private static String truncate(String s) { return s.length() > 80 ? s.substring(0, 80) : s; }

    /** The safetensors container (FORMAT.md §1). */
    static final class Safetensors {
        static final class Entry {
            final String dtype; final long[] shape; final long begin, end;
            Entry(String dtype, long[] shape, long begin, long end) { this.dtype = dtype; this.shape = shape; this.begin = begin; this.end = end; }
        }

        final int dataStart;
        final Map<String, String> metadata = new LinkedHashMap<>();
        final Map<String, Entry> tensors = new LinkedHashMap<>();

        private Safetensors(int dataStart) { this.dataStart = dataStart; }

        byte[] bytes(byte[] file, Entry e) {
            byte[] b = new byte[(int) (e.end - e.begin)];
            System.arraycopy(file, dataStart + (int) e.begin, b, 0, b.length);
            return b;
        }

        static Safetensors parse(byte[] file, String source) throws AdapterFormatException {
            if (file.length < 8) throw fail(source, "truncated: " + file.length + " bytes, not a safetensors file");
            long n = ByteBuffer.wrap(file, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
            if (n < 2 || n > file.length - 8) throw fail(source, "truncated or corrupt: header of " + n + " bytes in a " + file.length + "-byte file");
            Object h;
            try {
                h = Json.parse(new String(file, 8, (int) n, StandardCharsets.UTF_8));
            } catch (IllegalArgumentException e) {
                throw fail(source, "corrupt header: " + e.getMessage());
            }
            if (!(h instanceof Map)) throw fail(source, "corrupt header: not a JSON object");
            Safetensors st = new Safetensors(8 + (int) n);
            long dataLen = file.length - 8 - n;
            for (Map.Entry<?, ?> kv : ((Map<?, ?>) h).entrySet()) {
                String key = (String) kv.getKey();
                if (key.equals("__metadata__")) {
                    if (!(kv.getValue() instanceof Map)) throw fail(source, "corrupt header: __metadata__ is not an object");
                    for (Map.Entry<?, ?> m : ((Map<?, ?>) kv.getValue()).entrySet()) {
                        if (!(m.getValue() instanceof String)) throw fail(source, "corrupt header: metadata value is not a string");
                        st.metadata.put((String) m.getKey(), (String) m.getValue());
                    }
                    continue;
                }
                if (!(kv.getValue() instanceof Map)) throw fail(source, "corrupt header: entry " + key);
                Map<?, ?> t = (Map<?, ?>) kv.getValue();
                Object dt = t.get("dtype"), sh = t.get("shape"), off = t.get("data_offsets");
                if (!(dt instanceof String) || !(sh instanceof List) || !(off instanceof List) || ((List<?>) off).size() != 2)
                    throw fail(source, "corrupt header: entry " + key);
                List<?> shl = (List<?>) sh, ofl = (List<?>) off;
                long[] shape = new long[shl.size()];
                long count = 1;
                for (int k = 0; k < shape.length; k++) {
                    if (!(shl.get(k) instanceof Long)) throw fail(source, "corrupt header: entry " + key);
                    shape[k] = (Long) shl.get(k);
                    count *= shape[k];
                }
                if (!(ofl.get(0) instanceof Long) || !(ofl.get(1) instanceof Long)) throw fail(source, "corrupt header: entry " + key);
                long b = (Long) ofl.get(0), e = (Long) ofl.get(1);
                int size = Codings.dtypeSize((String) dt);
                if (size < 0) throw fail(source, "corrupt header: unknown dtype " + dt);
                if (b < 0 || b > e || e > dataLen) throw fail(source, "truncated: buffer " + key + " lies outside the data region");
                if (e - b != count * size) throw fail(source, "corrupt header: buffer " + key + " has the wrong length");
                st.tensors.put(key, new Entry((String) dt, shape, b, e));
            }
            return st;
        }
    }

    /** Convenience for tests and tools: all buffers of a file as a flat list of tensor names. */
    public List<String> targets() { return new ArrayList<>(tensors.keySet()); }
}
