// Reference runtime for tests: TF.js (pure-JS CPU backend) runs a graph model on float32 input.
// Usage: node tfjs_reference.js MODEL_JSON INPUT_BIN B,H,W,C OUT_JSON [OUTPUT_NODE ...]
// Needs @tensorflow/tfjs resolvable via NODE_PATH. Writes {name: {shape, data}} (data: base64
// float32), so Python reads exact values.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, inputBin, shapeText, outJson, ...names] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const spec = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const specs = [];
  const buffers = [];
  for (const group of spec.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: spec.modelTopology, weightSpecs: specs, weightData, format: spec.format,
    generatedBy: spec.generatedBy, convertedBy: spec.convertedBy, signature: spec.signature,
    userDefinedMetadata: spec.userDefinedMetadata}));
  const shape = shapeText.split(',').map(Number);
  const raw = fs.readFileSync(inputBin);
  const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), shape);
  const outs = names.length ? model.execute(input, names) : model.execute(input);
  const list = Array.isArray(outs) ? outs : [outs];
  const keys = names.length ? names : model.outputs.map((o) => o.name);
  const result = {};
  for (let i = 0; i < list.length; i++) {
    const data = Buffer.from((await list[i].data()).buffer);
    result[keys[i]] = {shape: list[i].shape, data: data.toString('base64')};
  }
  fs.writeFileSync(outJson, JSON.stringify(result));
}
main().catch((e) => { console.error(e); process.exit(1); });
