#!/usr/bin/env node
// The `hedwig` executable (package.json "bin"). hedwig runs TypeScript without a build
// step: register tsx's loader (resolved next to this file, so any working directory
// works), then hand over to the CLI.
import { register } from 'tsx/esm/api';

register();
await import('./run.ts');
