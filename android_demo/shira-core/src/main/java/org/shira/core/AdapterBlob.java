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
    static final String[] REQUIRED = {"shira.format", "shira.version", "shira.name", "shira.base_fingerprint",
            "shira.tensors", "shira.header_crc32", "shira.data_crc32"};

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
        List<String> missing = new ArrayList<>();
        for (String k : REQUIRED) if (!meta.containsKey(k)) missing.add(k);
        if (!missing.isEmpty()) throw fail(source, "corrupt metadata: missing " + String.join(", ", missing));
        String name = meta.get("shira.name");
        String fp = meta.get("shira.base_fingerprint");
        if (name.isEmpty() || name.length() > 1024 || name.chars().anyMatch(ch -> ch < 0x20))
            throw fail(source, "corrupt metadata: shira.name must be 1 to 1024 printable characters");
        if (!fp.matches("sha256:[0-9a-f]{64}"))
            throw fail(source, "corrupt metadata: shira.base_fingerprint is not 'sha256:' and 64 lowercase hex digits");
        if (expectedFingerprint != null && !expectedFingerprint.equals(fp))
            throw fail(source, "made for another base (" + fp + "), this base is " + expectedFingerprint);
        String tensorsJson = meta.get("shira.tensors");
        long headerCrc = u32Decimal(meta.get("shira.header_crc32")), dataCrc = u32Decimal(meta.get("shira.data_crc32"));
        if (headerCrc < 0 || dataCrc < 0)
            throw fail(source, "corrupt metadata: shira.header_crc32 and shira.data_crc32 must be decimal numbers below 2^32");
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
            throw fail(source, "corrupt tensor table: " + e.getMessage());
        }
        if (!(entries instanceof List)) throw fail(source, "corrupt tensor table: not a JSON array");
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

    private static long u32Decimal(String s) {
        if (s == null || !s.matches("[0-9]{1,10}")) return -1;
        long v = Long.parseLong(s);
        return v < (1L << 32) ? v : -1;
    }

    private static boolean isLong(Object o) { return o instanceof Long; }

    /** Every field of a tensor entry, type- and range-checked before any arithmetic (FORMAT.md §3). */
    private static Tensor readTensor(Object o, Safetensors st, byte[] file, String source,
                                     Map<String, long[]> baseShapes) throws AdapterFormatException {
        if (!(o instanceof Map)) throw fail(source, "corrupt tensor entry: not a JSON object");
        Map<?, ?> e = (Map<?, ?>) o;
        String target = str(e.get("target"));
        if (target == null || target.isEmpty() || target.length() > 1024)
            throw fail(source, "corrupt tensor entry: target must be a non-empty string: " + truncate(String.valueOf(o)));
        String where = "tensor " + target;
        Object shapeO = e.get("shape");
        if (!(shapeO instanceof List) || ((List<?>) shapeO).isEmpty() || ((List<?>) shapeO).size() > 8)
            throw fail(source, where + ": shape must be 1 to 8 integers in [1, 2^31)");
        List<?> sl = (List<?>) shapeO;
        long[] shape = new long[sl.size()];
        long numel = 1;
        for (int k = 0; k < shape.length; k++) {
            Object d = sl.get(k);
            if (!isLong(d) || (Long) d < 1 || (Long) d > Integer.MAX_VALUE)
                throw fail(source, where + ": shape must be 1 to 8 integers in [1, 2^31)");
            shape[k] = (Long) d;
            if (numel > (1L << 40) / shape[k]) throw fail(source, where + ": shape has more than 2^40 entries");
            numel *= shape[k];
        }
        Object nnzO = e.get("nnz"), crcO = e.get("crc32");
        if (!isLong(nnzO) || (Long) nnzO < 0 || (Long) nnzO > numel || (Long) nnzO > Integer.MAX_VALUE)
            throw fail(source, where + ": nnz " + nnzO + " impossible for its shape");
        if (!isLong(crcO) || (Long) crcO < 0 || (Long) crcO >= (1L << 32))
            throw fail(source, where + ": crc32 must be an integer in [0, 2^32)");
        long nnz = (Long) nnzO;
        String ic = str(e.get("index_coding")), vc = str(e.get("value_coding"));
        if (!Codings.INDEX.contains(ic)) throw fail(source, where + ": unknown index coding " + ic);
        if (!Codings.VALUE.contains(vc)) throw fail(source, where + ": unknown value coding " + vc);
        Object ikeyO = e.get("index_key"), vkeyO = e.get("value_key"), skeyO = e.get("scale_key");
        if (ic.equals("seed") && ikeyO != null) throw fail(source, where + ": index_key must be null for seed coding");
        if (!ic.equals("seed") && (!(ikeyO instanceof String) || ((String) ikeyO).isEmpty()))
            throw fail(source, where + ": index_key must be a buffer name");
        if (!(vkeyO instanceof String) || ((String) vkeyO).isEmpty()) throw fail(source, where + ": value_key must be a buffer name");
        if (vc.equals("int8-row") && (!(skeyO instanceof String) || ((String) skeyO).isEmpty()))
            throw fail(source, where + ": scale_key must be a buffer name for int8-row values");
        if (!vc.equals("int8-row") && skeyO != null) throw fail(source, where + ": scale_key is only allowed with int8-row values");
        String ikey = (String) ikeyO, vkey = (String) vkeyO, skey = (String) skeyO;
        if (vkey.equals(ikey) || vkey.equals(skey) || (ikey != null && ikey.equals(skey)))
            throw fail(source, where + ": index, value and scale buffers must be distinct");
        Object ip = e.get("index_params"), vp = e.get("value_params");
        if (!(ip instanceof Map)) throw fail(source, where + ": index_params must be a JSON object");
        if (!(vp instanceof Map)) throw fail(source, where + ": value_params must be a JSON object");
        java.util.Set<String> wantI = new java.util.HashSet<>(), wantV = new java.util.HashSet<>();
        if (ic.equals("elias-fano")) wantI.add("low_bits");
        if (ic.equals("seed")) wantI.add("seed");
        if (vc.equals("int8")) wantV.add("scale");
        if (!((Map<?, ?>) ip).keySet().equals(wantI)) throw fail(source, where + ": index_params of " + ic + " must hold exactly " + wantI);
        if (!((Map<?, ?>) vp).keySet().equals(wantV)) throw fail(source, where + ": value_params of " + vc + " must hold exactly " + wantV);
        if (ic.equals("elias-fano")) {
            Object lo = ((Map<?, ?>) ip).get("low_bits");
            if (!isLong(lo) || (Long) lo < 0 || (Long) lo > 40) throw fail(source, where + ": low_bits must be an integer in [0, 40]");
        }
        if (ic.equals("seed")) {
            Object sd = ((Map<?, ?>) ip).get("seed");
            if (!(sd instanceof String) || !((String) sd).matches("[0-9]{1,20}")
                    || new java.math.BigInteger((String) sd).bitLength() > 64)
                throw fail(source, where + ": seed must be a decimal string below 2^64");
        }
        if ((ic.equals("flat-u32") || ic.equals("seed")) && numel > (1L << 32))
            throw fail(source, where + ": " + ic + " coding is limited to 2^32 entries");
        if (vc.equals("int8")) {
            Object sc = ((Map<?, ?>) vp).get("scale");
            if (!(sc instanceof Long || sc instanceof Double) || !Double.isFinite(((Number) sc).doubleValue())
                    || ((Number) sc).doubleValue() < 0)
                throw fail(source, where + ": int8 scale must be a finite non-negative JSON number");
        }
        if (baseShapes != null) {
            long[] base = baseShapes.get(target);
            if (base == null) throw fail(source, where + ": not a patchable tensor of this base");
            if (!java.util.Arrays.equals(base, shape))
                throw fail(source, where + ": shape " + java.util.Arrays.toString(shape) + " does not match the base's "
                        + java.util.Arrays.toString(base));
        }
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
            raw.put(w.getKey(), st.bytes(ByteBuffer.wrap(file), te));
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
}
