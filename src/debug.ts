import createDebug from 'debug';

/** One namespace per concern, all under `container-volumes:` (enable with DEBUG=container-volumes:*). */
export const debugStore = createDebug('container-volumes:store');
export const debugLock = createDebug('container-volumes:lock');
export const debugMount = createDebug('container-volumes:mount');
export const debugRuntime = createDebug('container-volumes:runtime');
