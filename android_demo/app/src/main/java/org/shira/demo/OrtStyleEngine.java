package org.shira.demo;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxTensorLike;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import org.shira.core.PatchableBase;
import org.shira.core.StyleEngine;

/** The style net on ONNX Runtime, loaded once: the fallback where this phone's bake is not possible (the in-place
 *  engine, InPlaceOrtStyleEngine, is ~1.9x faster on the style net), and the reference the first bake is
 *  proven against. The patchable weights are graph inputs of model.onnx
 *  (docs/MANIFEST.md, "Why graph inputs"): each is an OnnxTensor over its slice of the direct buffer that holds
 *  weights.safetensors, which ONNX Runtime's Java API wraps without copying, so a patch written into that buffer
 *  is what the next run reads. Every other weight stays an initializer that ONNX Runtime prepacks. */
final class OrtStyleEngine implements StyleEngine {
    private final OrtEnvironment env = OrtEnvironment.getEnvironment(); // process-wide; never closed by one user
    private final Map<String, OnnxTensor> feeds = new HashMap<>();
    private final FloatBuffer image;
    private final String inputName;
    private OrtSession.SessionOptions options;
    private OrtSession session;
    private final String why; // why not in place (shown on screen), or null

    OrtStyleEngine(byte[] model, PatchableBase base, String inputName, int size, int threads, String why)
            throws OrtException {
        this.inputName = inputName;
        this.why = why;
        image = ByteBuffer.allocateDirect(4 * 3 * size * size).order(ByteOrder.nativeOrder()).asFloatBuffer();
        try {
            options = new OrtSession.SessionOptions();
            options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
            options.setIntraOpNumThreads(threads);
            session = env.createSession(model, options);
            for (Map.Entry<String, long[]> p : base.placements.entrySet())
                feeds.put(p.getKey(), OnnxTensor.createTensor(env, base.buffers.get(p.getKey()), p.getValue()));
            feeds.put(inputName, OnnxTensor.createTensor(env, image, new long[]{1, 3, size, size}));
        } catch (OrtException | RuntimeException e) {
            close(); // a half-built engine releases what it made
            throw e;
        }
    }

    @Override
    public String name() { return why == null ? "ONNX Runtime, patchable" : "ONNX Runtime, patchable (" + why + ")"; }

    @Override
    public float[] run(float[] chw, int size) throws OrtException {
        image.clear();
        image.put(chw);
        return firstOutput(session, feeds);
    }

    /** One run: its first output's floats, copied out of ORT's result (closed here). */
    static float[] firstOutput(OrtSession session, Map<String, ? extends OnnxTensorLike> feeds) throws OrtException {
        try (OrtSession.Result r = session.run(feeds)) {
            FloatBuffer out = ((OnnxTensor) r.get(0)).getFloatBuffer(); // a copy, owned by us
            float[] pixels = new float[out.remaining()];
            out.get(pixels);
            return pixels;
        }
    }

    @Override
    public boolean weightsChanged(Set<String> changed) {
        return false; // the weight tensors alias the patched buffer: the next run reads it
    }

    @Override
    public void close() {
        for (OnnxTensor t : feeds.values()) t.close();
        feeds.clear();
        if (session != null) {
            try { session.close(); } catch (OrtException ignored) { /* nothing left to release */ }
            session = null;
        }
        if (options != null) { options.close(); options = null; }
    }
}
