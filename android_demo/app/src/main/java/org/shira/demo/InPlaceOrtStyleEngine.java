package org.shira.demo;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.Collections;
import java.util.Map;
import java.util.Set;
import org.shira.core.BakedWeights;
import org.shira.core.Baker;
import org.shira.core.PatchableBase;
import org.shira.core.StyleEngine;

/** The style net on ONNX Runtime's own packed weights, patched where they lie (docs/INPLACE.md): one engine at
 *  the base's speed, no weights as graph inputs. ORT runs a working copy of this phone's bake (OnDeviceBake),
 *  made afresh from the bake at every start so that patches of an earlier run (or one killed mid-write) never
 *  leak; it maps that copy's baked.bin privately and never writes it, so the floats {@link BakedWeights} writes
 *  through its shared mapping of the same file are what ORT's next run reads. The patcher keeps the weights'
 *  state in the export's buffers (PatchableBase), and every commit's touched entries are mirrored here. */
final class InPlaceOrtStyleEngine implements StyleEngine {
    private final OrtEnvironment env = OrtEnvironment.getEnvironment(); // process-wide; never closed by one user
    private final PatchableBase base;
    private final FloatBuffer image;
    private final String inputName;
    private final long[] shape;
    private OrtSession.SessionOptions options;
    private OrtSession session;
    private OnnxTensor input;
    private BakedWeights baked;

    InPlaceOrtStyleEngine(File bakeDir, File workDir, PatchableBase base, String inputName, int size, int threads)
            throws IOException, OrtException {
        this.base = base;
        this.inputName = inputName;
        shape = new long[]{1, 3, size, size};
        image = ByteBuffer.allocateDirect(4 * 3 * size * size).order(ByteOrder.nativeOrder()).asFloatBuffer();
        try {
            if (!workDir.isDirectory() && !workDir.mkdirs()) throw new IOException(workDir + ": cannot create it");
            for (String f : new String[]{Baker.BAKED_DATA, Baker.BAKED_MODEL}) { // temp + rename: whole or none
                File tmp = new File(workDir, f + ".tmp");
                Files.copy(new File(bakeDir, f).toPath(), tmp.toPath(), StandardCopyOption.REPLACE_EXISTING);
                Files.move(tmp.toPath(), new File(workDir, f).toPath(), StandardCopyOption.REPLACE_EXISTING);
            }
            baked = BakedWeights.open(bakeDir, new File(workDir, Baker.BAKED_DATA));
            options = new OrtSession.SessionOptions();
            // optimized at bake time; optimizing again could only make private copies of the weights
            options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.NO_OPT);
            options.setIntraOpNumThreads(threads);
            for (Map.Entry<String, String> e : baked.sessionConfig.entrySet()) // as baked, or ORT packs anew
                options.addConfigEntry(e.getKey(), e.getValue());
            session = env.createSession(new File(workDir, Baker.BAKED_MODEL).getPath(), options);
            input = OnnxTensor.createTensor(env, image, shape);
        } catch (IOException | OrtException | RuntimeException e) {
            close(); // a half-built engine releases what it made
            throw e;
        }
    }

    @Override
    public String name() { return "ONNX Runtime, in place"; }

    @Override
    public float[] run(float[] chw, int size) throws OrtException {
        image.clear();
        image.put(chw);
        return OrtStyleEngine.firstOutput(session, Collections.singletonMap(inputName, input));
    }

    @Override
    public boolean weightsChanged(Set<String> changed) {
        throw new IllegalStateException("in place needs the touched entries: weightsChanged(changed, touched)");
    }

    @Override
    public boolean weightsChanged(Set<String> changed, Map<String, int[]> touched) {
        baked.mirror(touched, base.buffers); // the next run reads them: nothing to reload
        return false;
    }

    @Override
    public void close() {
        if (input != null) { input.close(); input = null; }
        if (session != null) {
            try { session.close(); } catch (OrtException ignored) { /* nothing left to release */ }
            session = null;
        }
        if (options != null) { options.close(); options = null; }
        if (baked != null) {
            try { baked.close(); } catch (IOException ignored) { /* the mapping goes with the garbage collector */ }
            baked = null;
        }
    }
}
