/** `container-volumes/testing`: the Mounter contract, for checking a mounter of your own. */
export { mounterContract, type MounterContractCase, type MounterFixture } from './mounter/contract.js';
