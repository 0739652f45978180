// Runs OHIF's own DICOM SR parsing on an SR, without a browser.
//
//   node ohif_sr_harness.js DIST SR.json IMAGES.json
//
// DIST is the prebuilt viewer of npm @ohif/app (package/dist). The code that turns an SR
// into measurements (extensions/cornerstone-dicom-sr getSopClassHandlerModule: _load's
// _getMeasurements, _getReferencedImagesList and _checkIfCanAddMeasurementsToDisplaySet)
// is cut out of its bundle as shipped and run on the SR as OHIF's DICOMweb data source
// hands it over: DICOM JSON naturalized the way dcmjs does it (keywords; a one-item
// sequence becomes an array proxy whose missing properties read its first item; a
// one-value element becomes the value), with dcmjs' own proxy code, cut from the bundle.
//
// SR.json: {"dataset": DICOM JSON of the SR, "keywords": {"ggggeeee": "Keyword", ...}}
// IMAGES.json: [{"sop_instance_uid": ..., "sop_class_uid": ..., "frames": N|null}] : the
// source series as one display set, each frame one image id "UID:frame".
// Prints {"measurements": [...], "referencedImages": [...], "annotations": [...]} or
// {"error": "TypeError: ..."} (exit 0 either way; exit 2 when the bundle is not usable).
'use strict';
const fs = require('fs');
const path = require('path');

const [dist, srPath, imagesPath] = process.argv.slice(2);

function bundleWith(marker) {
  for (const name of fs.readdirSync(dist)) {
    if (!name.endsWith('.js')) continue;
    const text = fs.readFileSync(path.join(dist, name), 'utf8');
    if (text.includes(marker)) return text;
  }
  throw new Error(`no bundle in ${dist} contains ${JSON.stringify(marker)}`);
}

function cut(text, start, end, inclusiveEnd = true) {
  const i = text.indexOf(start);
  if (i < 0) throw new Error(`start ${JSON.stringify(start)} not found`);
  const j = text.indexOf(end, i + start.length);
  if (j < 0) throw new Error(`end ${JSON.stringify(end)} not found`);
  return text.slice(i, inclusiveEnd ? j + end.length : j);
}

let sr, accessors, adapterConstants;
try {
  const srBundle = bundleWith('skipping ambiguous measurement');
  const enumsText = cut(srBundle, 'const CodeNameCodeSequenceValues = {', '\n};') + '\n' +
    cut(srBundle, 'const CodingSchemeDesignators = {', '\n};');
  let handlerText = cut(srBundle, 'function _measurementBelongsToDisplaySet(',
    'function isTextPosition(group) {', false) +
    cut(srBundle, 'function isTextPosition(group) {', '\n}');
  // webpack module references: enums/* .CodeNameCodeSequenceValues.X */.n7.X -> CodeNameCodeSequenceValues.X
  handlerText = handlerText.replace(/enums\/\* \.([\w.]+) \*\/\.[\w$]+\.[\w.]+/g, '$1');
  if (/\/\* \./.test(handlerText)) throw new Error('unresolved module reference in SR handler');
  sr = { enumsText, handlerText };
  const dcmjs = bundleWith('var addAccessors = function addAccessors(');
  accessors = cut(dcmjs, 'var handler = {', '\n};') + '\n' +
    cut(dcmjs, 'var addAccessors = function addAccessors(', '\n};');
  const adapters = bundleWith('const TEXT_ANNOTATION_POSITION = {');
  adapterConstants = cut(adapters, "const CS3D_DESIGNATOR = ", ';') + '\n' +
    cut(adapters, 'const TEXT_ANNOTATION_POSITION = {', '\n};') + '\n' +
    cut(adapters, 'const COMMENT_CODE = {', '\n};');
} catch (err) {
  process.stderr.write(`cannot use the OHIF bundle: ${err.message}\n`);
  process.exit(2);
}

const { addAccessors } = new Function(`${accessors}\nreturn { addAccessors };`)();

function naturalize(dataset, keywords) {
  const out = {};
  for (const tag of Object.keys(dataset)) {
    const data = dataset[tag];
    const name = keywords[tag] || tag;
    if (data.Value === undefined) {
      out[name] = data.InlineBinary ? { InlineBinary: data.InlineBinary }
        : data.BulkDataURI ? { BulkDataURI: data.BulkDataURI } : null;
      continue;
    }
    out[name] = data.vr === 'SQ' ? data.Value.map(item => naturalize(item, keywords)) : data.Value;
    if (out[name].length === 1) {
      const zero = out[name][0];
      out[name] = zero && typeof zero === 'object' && !zero.length ? addAccessors(out[name], zero) : zero;
    }
  }
  return out;
}

const { dataset, keywords } = JSON.parse(fs.readFileSync(srPath, 'utf8'));
const images = JSON.parse(fs.readFileSync(imagesPath, 'utf8'));
const instance = naturalize(dataset, keywords);

const annotations = [];
const env = {
  sopClassDictionary: { Comprehensive3DSR: '1.2.840.10008.5.1.4.1.1.88.34' },
  metadataProvider: {
    getUIDsFromImageID(imageId) {
      const [SOPInstanceUID, frame] = imageId.split(':');
      return { SOPInstanceUID, frameNumber: frame === undefined ? undefined : Number(frame) };
    },
  },
  addSRAnnotation({ measurement, imageId, frameNumber }) {
    annotations.push({
      TrackingUniqueIdentifier: measurement.TrackingUniqueIdentifier,
      imageId,
      frameNumber,
      GraphicType: measurement.coords[0].GraphicType,
      // OHIF shows measurement.labels as "label: value" lines beside the drawing
      lines: (measurement.labels || []).slice(0, 5).map(l => `${l.label}: ${l.value}`),
    });
  },
  Cornerstone3DCodeScheme: { CodingSchemeDesignator: '99CS3D', codeValues: { CORNERSTONEFREETEXT: 'CORNERSTONEFREETEXT' } },
};
const names = Object.keys(env);
const run = new Function(...names, `
  ${adapterConstants}
  ${sr.enumsText}
  ${sr.handlerText}
  return { _getMeasurements, _getReferencedImagesList, _checkIfCanAddMeasurementsToDisplaySet };
`)(...names.map(n => env[n]));

const imageIds = [];
for (const image of images) {
  if (image.frames) {
    for (let f = 1; f <= image.frames; f++) imageIds.push(`${image.sop_instance_uid}:${f}`);
  } else {
    imageIds.push(image.sop_instance_uid);
  }
}
const sourceDisplaySet = { displaySetInstanceUID: 'source-series', imageIds, FrameOfReferenceUID: images[0]?.frame_of_reference_uid };
const dataSource = { getImageIdsForDisplaySet: ds => ds.imageIds };
const servicesManager = { services: { customizationService: { getCustomization: () => undefined } } };

let result;
try {
  // What _load does once the SR display set is opened (isImagingMeasurementReport true).
  const srDisplaySet = {
    SOPClassUID: instance.SOPClassUID,
    StudyInstanceUID: instance.StudyInstanceUID,
    SeriesInstanceUID: instance.SeriesInstanceUID,
    referencedImages: run._getReferencedImagesList(instance.ContentSequence),
    measurements: run._getMeasurements(instance.ContentSequence),
  };
  run._checkIfCanAddMeasurementsToDisplaySet(srDisplaySet, sourceDisplaySet, dataSource, servicesManager);
  result = {
    referencedImages: srDisplaySet.referencedImages,
    measurements: srDisplaySet.measurements.map(m => ({
      TrackingIdentifier: m.TrackingIdentifier,
      TrackingUniqueIdentifier: m.TrackingUniqueIdentifier,
      loaded: m.loaded,
      imageId: m.imageId,
      frameNumber: m.frameNumber,
      labels: m.labels,
      coords: m.coords.map(c => ({
        ValueType: c.ValueType,
        GraphicType: c.GraphicType,
        GraphicData: Array.from(c.GraphicData || []),
      })),
    })),
    annotations,
  };
} catch (err) {
  result = { error: `${err.name}: ${err.message}` };
}
process.stdout.write(JSON.stringify(result));
