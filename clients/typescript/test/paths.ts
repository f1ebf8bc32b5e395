import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** clients/typescript (tests run from dist/test/, compiled). */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_ROOT = resolve(PACKAGE_DIR, "../..");
export const EXAMPLES_DIR = resolve(REPO_ROOT, "schemas/examples");
/** The receiver's clock the vectors are checked with (2026-11-23T00:00:00Z). */
export const VECTOR_NOW_MS = 1795392000000;
