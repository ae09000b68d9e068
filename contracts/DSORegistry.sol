// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title FAI DSO registry: bonded operators, signed peer advertisements, slashing.
/// @notice Nodes find each other through advertisements posted here; the bond makes
/// provable misbehaviour (equivocation, or fraud agreed by a stake supermajority) costly.
/// @dev Multiaddrs are not stored: they are emitted in `AdvertisementPosted` and only their
/// hash is kept, so renewals stay cheap. Clients read the latest event whose hash matches
/// `operatorInfo(op).multiaddrsHash`. The Ed25519 peer key cannot be checked on-chain (no
/// precompile): a peer key is never bound here. Every advertisement carries an Ed25519
/// possession proof (`keyProof`) that clients verify when they read it; an advertisement
/// whose proof does not verify is ignored, so nobody can block or take over another key.
contract DSORegistry is Ownable2Step, Pausable, EIP712 {
    using SafeERC20 for IERC20;

    // ---------------------------------------------------------------- types

    /// @dev Packed so that liveness needs two storage slots and a renewal rewrites one.
    struct Operator {
        // slot 0: bond and list membership
        uint96 stake; // bonded, counts for liveness and fraud votes
        uint96 unbonding; // waiting for the delay; still slashable
        bool registered; // in the operator list (holds bonded or unbonding stake)
        bool jailed; // permanent: a jailed operator can only leave, never come back
        uint16 listIndex; // position in the operator list while registered
        // slot 1: rewritten by every renewal
        uint40 adExpiry; // advertisement valid while block.timestamp < adExpiry
        uint64 adNonce; // next advertisement nonce expected (never reset)
        uint40 adBlock; // block of the current advertisement's AdvertisementPosted event
        uint40 unbondReadyAt; // when `unbonding` may be withdrawn
        uint40 fraudCooldownUntil; // no fraud report against this operator before this time
        // slots 2, 3
        bytes32 peerKey; // Ed25519 public key of the node (libp2p identity)
        bytes32 multiaddrsHash; // keccak256(abi.encode(string[] multiaddrs)) of the current ad
    }

    /// @dev Header every node signs for each batch it publishes (fixed interface with fai_core).
    struct BatchHeader {
        bytes32 peerKey;
        uint64 seq;
        bytes32 cidDigest;
        uint64 timestampMs;
    }

    struct FraudCase {
        address target;
        uint40 openedAt;
        uint40 openedBlock; // block of FraudCaseOpened, which carries the snapshot
        bool executed;
        uint112 snapshotBondedStake; // bonded stake of every operator (target included) at opening
        uint112 reportedStake; // sum of reporter weights
        uint32 reporters;
        bytes32 evidenceHash;
        bytes32 snapshotHash; // keccak256(abi.encode(address[] operators, uint256[] weights))
    }

    // ------------------------------------------------------------ constants

    bytes32 public constant ADVERTISEMENT_TYPEHASH = keccak256(
        "PeerAdvertisement(address operator,bytes32 peerKey,bytes32 multiaddrsHash,bytes32 keyProofHash,uint64 expiry,uint64 nonce)"
    );
    bytes32 public constant BATCH_HEADER_TYPEHASH =
        keccak256("BatchHeader(bytes32 peerKey,uint64 seq,bytes32 cidDigest,uint64 timestampMs)");

    /// @notice Advertisements expire at most this far ahead (paper section 3.2: 24 h).
    uint256 public constant MAX_AD_TTL = 24 hours;
    uint256 public constant MAX_MULTIADDRS = 8;
    uint256 public constant MAX_MULTIADDR_BYTES = 256;
    /// @notice Bounds the fraud snapshot loop so a report always fits in a block. Counts only
    /// operators holding bonded or unbonding stake: leaving frees the place.
    uint256 public constant MAX_OPERATORS = 256;
    uint256 public constant BPS = 10_000;
    /// @notice Reporter reward can never exceed half of what is slashed.
    uint256 public constant MAX_REWARD_BPS = 5_000;
    /// @notice Length of an Ed25519 signature: the peer-key possession proof.
    uint256 public constant KEY_PROOF_LENGTH = 64;

    // ------------------------------------------------------------ immutables

    IERC20 public immutable stakeToken;
    uint256 public immutable minBond;
    uint256 public immutable unbondingDelay;
    uint256 public immutable slashBps;
    uint256 public immutable reporterRewardBps;

    // ---------------------------------------------------------------- state

    mapping(address => Operator) private _operators;
    address[] private _operatorList;
    /// @notice The operator's current header/advertisement signer (zero: the operator key).
    mapping(address => address) public signerOf;
    /// @notice Operator a signer was ever authorised for; never deleted, so headers signed by
    /// a rotated-out signer stay slashable.
    mapping(address => address) public signerOperator;
    mapping(address => mapping(bytes32 => mapping(uint64 => bool))) private _equivocationSlashed;
    /// @dev Peer keys each operator ever advertised (set by its first `AdvertisementPosted`
    /// naming the key): an operator is slashable only for headers of its own keys.
    mapping(address => mapping(bytes32 => bool)) private _advertisedKey;
    mapping(bytes32 => FraudCase) private _cases;
    mapping(bytes32 => mapping(address => bool)) private _reported;
    /// @notice Block of each equivocation commitment (`commitEquivocation`); 0 when none.
    mapping(bytes32 => uint256) public equivocationCommitBlock;
    /// @notice Slashed tokens not paid out as rewards; only the owner can sweep them.
    uint256 public slashedPot;

    // --------------------------------------------------------------- events

    event Registered(address indexed operator, uint256 stake);
    event Deregistered(address indexed operator);
    event StakeAdded(address indexed operator, uint256 amount, uint256 stake);
    event UnbondRequested(
        address indexed operator, uint256 amount, uint256 unbonding, uint256 readyAt
    );
    event Withdrawn(address indexed operator, uint256 amount);
    event SignerSet(address indexed operator, address indexed signer, address previous);
    event AdvertisementPosted(
        address indexed operator,
        bytes32 indexed peerKey,
        uint64 expiry,
        uint64 nonce,
        bytes32 multiaddrsHash,
        string[] multiaddrs,
        bytes keyProof,
        address relayer
    );
    event Slashed(address indexed operator, uint256 amount, uint256 reward, address indexed rewardee);
    /// @notice A slash moved bonded stake into unbonding (jailing, or a remainder below
    /// minBond): `amount` moved, `unbonding` now, withdrawable from `readyAt`.
    event UnbondForced(address indexed operator, uint256 amount, uint256 unbonding, uint256 readyAt);
    /// @notice Permanent; also clears the advertisement (adExpiry = 0).
    event Jailed(address indexed operator);
    event EquivocationCommitted(bytes32 indexed commitment, address indexed committer);
    event EquivocationProven(
        address indexed operator,
        bytes32 indexed peerKey,
        uint64 indexed seq,
        bytes32 cidDigestA,
        bytes32 cidDigestB,
        address reporter,
        bytes32 commitment
    );
    event FraudCaseOpened(
        bytes32 indexed caseId,
        address indexed target,
        bytes32 evidenceHash,
        uint256 snapshotBondedStake,
        address[] snapshotOperators,
        uint256[] snapshotWeights
    );
    event FraudReported(
        bytes32 indexed caseId, address indexed reporter, uint256 weight, uint256 reportedStake
    );
    event FraudCaseExecuted(
        bytes32 indexed caseId, address indexed target, uint256 slashed, uint256 cooldownUntil
    );
    event SlashedPotSwept(address indexed to, uint256 amount);

    // --------------------------------------------------------------- errors

    error InvalidConfig(string what);
    error ZeroAmount();
    error BelowMinimumBond(uint256 stake, uint256 minimum);
    error AlreadyRegistered(address operator);
    error NotRegistered(address operator);
    error OperatorIsJailed(address operator);
    error RegistryFull(uint256 maxOperators);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw(address operator);
    error UnbondingNotReady(uint256 readyAt, uint256 nowTs);
    error ExpiryNotInFuture(uint256 expiry, uint256 nowTs);
    error ExpiryTooFar(uint256 expiry, uint256 maxExpiry);
    error InvalidNonce(uint256 expected, uint256 given);
    error InvalidSignature(address expectedSigner, address recovered);
    error ZeroPeerKey();
    error BadKeyProofLength(uint256 length, uint256 expected);
    error BadMultiaddrCount(uint256 count, uint256 maximum);
    error BadMultiaddrLength(uint256 index, uint256 length, uint256 maximum);
    error SignerTaken(address signer, address operator);
    error NotEquivocation();
    error AlreadySlashed(address operator, bytes32 peerKey, uint64 seq);
    error KeyNotAdvertised(address operator, bytes32 peerKey);
    error AlreadyCommitted(bytes32 commitment);
    error NotCommitted(bytes32 commitment);
    error CommitTooRecent(bytes32 commitment, uint256 commitBlock);
    error ReporterNotBonded(address reporter);
    error FraudCooldown(address target, uint256 until);
    error SelfReport();
    error TargetJailed(address target);
    error FraudCaseClosed(bytes32 caseId);
    error FraudCaseExpired(bytes32 caseId, uint256 deadline);
    error AlreadyReported(bytes32 caseId, address reporter);
    error SnapshotMismatch(bytes32 caseId);
    error NotInSnapshot(bytes32 caseId, address reporter);
    error RenounceDisabled();
    error ZeroAddress();

    // ---------------------------------------------------------- constructor

    constructor(
        IERC20 token,
        uint256 minBond_,
        uint256 unbondingDelay_,
        uint256 slashBps_,
        uint256 reporterRewardBps_,
        address owner_
    ) Ownable(owner_) EIP712("FAI DSORegistry", "1") {
        if (address(token) == address(0)) revert InvalidConfig("token");
        if (minBond_ == 0 || minBond_ > type(uint96).max) revert InvalidConfig("minBond");
        if (unbondingDelay_ == 0 || unbondingDelay_ > 365 days) {
            revert InvalidConfig("unbondingDelay");
        }
        if (slashBps_ == 0 || slashBps_ > BPS) revert InvalidConfig("slashBps");
        if (reporterRewardBps_ > MAX_REWARD_BPS) revert InvalidConfig("reporterRewardBps");
        stakeToken = token;
        minBond = minBond_;
        unbondingDelay = unbondingDelay_;
        slashBps = slashBps_;
        reporterRewardBps = reporterRewardBps_;
    }

    // --------------------------------------------------------------- owner

    /// @notice Stops new operators from joining; nothing else (see `register`).
    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Disabled: an ownerless registry could never be unpaused or swept.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    /// @notice Moves slashed tokens out; rewards were already paid at slashing time.
    function sweepSlashed(address to) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        uint256 amount = slashedPot;
        if (amount == 0) revert ZeroAmount();
        slashedPot = 0;
        emit SlashedPotSwept(to, amount);
        stakeToken.safeTransfer(to, amount);
    }

    // ------------------------------------------------------------- bonding

    /// @notice Joins with `amount` >= minBond. The only function the owner's pause stops.
    /// An operator that left (withdrew everything) may register again unless it was jailed.
    function register(uint256 amount) external whenNotPaused {
        Operator storage op = _operators[msg.sender];
        if (op.registered) revert AlreadyRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (amount < minBond) revert BelowMinimumBond(amount, minBond);
        uint256 index = _operatorList.length;
        if (index >= MAX_OPERATORS) revert RegistryFull(MAX_OPERATORS);
        op.registered = true;
        op.stake = SafeCast.toUint96(amount);
        op.listIndex = uint16(index);
        _operatorList.push(msg.sender);
        emit Registered(msg.sender, amount);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Tops up the bond; after a full unbond the top-up must reach the minimum again.
    function addStake(uint256 amount) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 newStake = uint256(op.stake) + amount;
        if (newStake < minBond) revert BelowMinimumBond(newStake, minBond);
        op.stake = SafeCast.toUint96(newStake);
        emit StakeAdded(msg.sender, amount, newStake);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Starts (or extends) the exit clock; the amount stays slashable until withdrawn.
    /// @dev What remains bonded must be zero or at least the minimum, so no dust operators.
    function requestUnbond(uint256 amount) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 stake = op.stake;
        if (amount > stake) revert InsufficientStake(amount, stake);
        uint256 remaining = stake - amount;
        if (remaining != 0 && remaining < minBond) revert BelowMinimumBond(remaining, minBond);
        uint256 readyAt = block.timestamp + unbondingDelay;
        uint256 unbonding = uint256(op.unbonding) + amount;
        op.stake = SafeCast.toUint96(remaining);
        op.unbonding = SafeCast.toUint96(unbonding);
        op.unbondReadyAt = SafeCast.toUint40(readyAt);
        emit UnbondRequested(msg.sender, amount, unbonding, readyAt);
    }

    /// @notice Never paused: operators can always leave once the delay has passed. Leaving
    /// with nothing bonded removes the operator from the list (frees its place).
    function withdraw() external {
        Operator storage op = _operators[msg.sender];
        uint256 amount = op.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < op.unbondReadyAt) {
            revert UnbondingNotReady(op.unbondReadyAt, block.timestamp);
        }
        op.unbonding = 0;
        emit Withdrawn(msg.sender, amount);
        if (op.stake == 0) _removeOperator(msg.sender);
        stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @notice Authorises `signer` to sign batch headers and advertisements for the caller,
    /// replacing the previous signer for advertisements. Withdrawal stays with the operator
    /// key. Headers signed by any signer ever authorised stay slashable for this operator.
    function setSigner(address signer) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (signer == address(0)) revert ZeroAddress();
        address bound = signerOperator[signer];
        if (bound == address(0)) {
            signerOperator[signer] = msg.sender;
        } else if (bound != msg.sender) {
            revert SignerTaken(signer, bound);
        }
        address previous = signerOf[msg.sender];
        signerOf[msg.sender] = signer;
        emit SignerSet(msg.sender, signer, previous);
    }

    // ------------------------------------------------------ advertisements

    /// @notice Posts or renews an advertisement signed by `operator` (or its current signer);
    /// anyone may relay it. Not stopped by the pause: renewals keep operators live.
    /// `keyProof` is the node's Ed25519 signature proving it holds `peerKey` for `operator`
    /// (see docs/registry.md); the chain cannot check it, so it only travels in the event and
    /// clients ignore advertisements whose proof does not verify. No key is ever reserved here.
    /// @dev The nonce must equal the operator's next nonce, so each signature is usable once;
    /// the EIP-712 domain binds it to this chain id and this contract. The signature covers
    /// keccak256(keyProof), so a relayer cannot swap the proof.
    function postAdvertisement(
        address operator,
        bytes32 peerKey,
        string[] calldata multiaddrs,
        uint64 expiry,
        uint64 nonce,
        bytes calldata keyProof,
        bytes calldata signature
    ) external {
        Operator storage op = _operators[operator];
        if (!op.registered) revert NotRegistered(operator);
        if (op.jailed) revert OperatorIsJailed(operator);
        if (peerKey == bytes32(0)) revert ZeroPeerKey();
        if (keyProof.length != KEY_PROOF_LENGTH) {
            revert BadKeyProofLength(keyProof.length, KEY_PROOF_LENGTH);
        }
        _checkMultiaddrs(multiaddrs);
        if (expiry <= block.timestamp) revert ExpiryNotInFuture(expiry, block.timestamp);
        if (expiry > block.timestamp + MAX_AD_TTL) {
            revert ExpiryTooFar(expiry, block.timestamp + MAX_AD_TTL);
        }
        if (nonce != op.adNonce) revert InvalidNonce(op.adNonce, nonce);

        bytes32 maHash = keccak256(abi.encode(multiaddrs));
        _requireAdSigner(
            hashAdvertisement(operator, peerKey, maHash, keccak256(keyProof), expiry, nonce),
            signature,
            operator
        );

        op.adExpiry = uint40(expiry);
        op.adNonce = nonce + 1;
        op.adBlock = uint40(block.number);
        if (op.peerKey != peerKey) {
            op.peerKey = peerKey;
            if (!_advertisedKey[operator][peerKey]) _advertisedKey[operator][peerKey] = true;
        }
        op.multiaddrsHash = maHash;
        emit AdvertisementPosted(operator, peerKey, expiry, nonce, maHash, multiaddrs, keyProof, msg.sender);
    }

    // ------------------------------------------------------------- slashing

    /// @notice Step one of an equivocation report: commit to the evidence and to who gets the
    /// reward, `commitment = equivocationCommitment(a, b, beneficiary)`. The evidence can be
    /// revealed (`slashEquivocation`) from the next block on, by anyone; the reward always
    /// goes to the committed beneficiary, so copying a pending reveal cannot redirect it.
    function commitEquivocation(bytes32 commitment) external {
        if (equivocationCommitBlock[commitment] != 0) revert AlreadyCommitted(commitment);
        equivocationCommitBlock[commitment] = block.number;
        emit EquivocationCommitted(commitment, msg.sender);
    }

    /// @notice Step two: proves equivocation by `operator` with two headers for one
    /// (peerKey, seq) whose cid digests differ, each signed by the operator or by a signer it
    /// ever authorised, for a peer key the operator has advertised (ever). Slashes, pays the reward to `beneficiary`, jails the operator. Needs
    /// `commitEquivocation(equivocationCommitment(a, b, beneficiary))` in an earlier block;
    /// the commitment is consumed.
    function slashEquivocation(
        address operator,
        BatchHeader calldata a,
        bytes calldata sigA,
        BatchHeader calldata b,
        bytes calldata sigB,
        address beneficiary
    ) external {
        if (a.peerKey != b.peerKey || a.seq != b.seq || a.cidDigest == b.cidDigest) {
            revert NotEquivocation();
        }
        if (!_operators[operator].registered) revert NotRegistered(operator);
        if (!_advertisedKey[operator][a.peerKey]) revert KeyNotAdvertised(operator, a.peerKey);
        if (_equivocationSlashed[operator][a.peerKey][a.seq]) {
            revert AlreadySlashed(operator, a.peerKey, a.seq);
        }
        bytes32 digestA = hashBatchHeader(a);
        bytes32 digestB = hashBatchHeader(b);
        _requireHeaderSigner(digestA, sigA, operator);
        _requireHeaderSigner(digestB, sigB, operator);
        if (beneficiary == address(0)) revert ZeroAddress();
        bytes32 commitment = keccak256(abi.encode(digestA, digestB, beneficiary));
        uint256 committed = equivocationCommitBlock[commitment];
        if (committed == 0) revert NotCommitted(commitment);
        if (committed >= block.number) revert CommitTooRecent(commitment, committed);
        delete equivocationCommitBlock[commitment];

        _equivocationSlashed[operator][a.peerKey][a.seq] = true;
        emit EquivocationProven(
            operator, a.peerKey, a.seq, a.cidDigest, b.cidDigest, beneficiary, commitment
        );
        (, uint256 reward) = _slash(operator, reporterRewardBps, beneficiary, true);
        if (reward != 0) stakeToken.safeTransfer(beneficiary, reward);
    }

    /// @notice A bonded operator reports `target` for the fraud described by `evidenceHash`.
    /// The first report opens a case and snapshots the bonded stake of every operator holding
    /// any (the target's included, jailed operators hold none) into `FraudCaseOpened`; later
    /// reporters pass that snapshot back (`snapshotOperators`, `snapshotWeights`; the opener
    /// passes empty arrays) and count min(snapshot weight, current bonded stake). Once
    /// reported weight exceeds two thirds of the snapshotted bonded stake, the target is
    /// slashed once, without jailing, and no report against it is accepted for
    /// `unbondingDelay` (`FraudCooldown`), whatever the evidence.
    /// @dev Reports close `unbondingDelay` after opening: stake counted in a report cannot be
    /// withdrawn and re-staked elsewhere before the case closes, so no token counts twice.
    function reportFraud(
        address target,
        bytes32 evidenceHash,
        address[] calldata snapshotOperators,
        uint256[] calldata snapshotWeights
    ) external {
        if (target == msg.sender) revert SelfReport();
        uint256 current = _operators[msg.sender].stake; // zero when jailed
        if (current == 0) revert ReporterNotBonded(msg.sender);
        bytes32 caseId = fraudCaseId(target, evidenceHash);
        FraudCase storage c = _cases[caseId];
        if (c.executed) revert FraudCaseClosed(caseId);
        Operator storage t = _operators[target];
        if (!t.registered) revert NotRegistered(target);
        if (t.jailed) revert TargetJailed(target);
        if (block.timestamp < t.fraudCooldownUntil) revert FraudCooldown(target, t.fraudCooldownUntil);
        uint256 weight;
        if (c.openedAt == 0) {
            weight = _openCase(c, caseId, target, evidenceHash);
        } else {
            uint256 deadline = uint256(c.openedAt) + unbondingDelay;
            if (block.timestamp >= deadline) revert FraudCaseExpired(caseId, deadline);
            if (_reported[caseId][msg.sender]) revert AlreadyReported(caseId, msg.sender);
            weight = _snapshotWeight(c.snapshotHash, caseId, snapshotOperators, snapshotWeights);
            if (current < weight) weight = current;
        }
        _reported[caseId][msg.sender] = true;
        uint256 reported = uint256(c.reportedStake) + weight;
        c.reportedStake = uint112(reported); // <= snapshot total, which fits
        c.reporters += 1;
        emit FraudReported(caseId, msg.sender, weight, reported);

        if (3 * reported > 2 * uint256(c.snapshotBondedStake)) {
            c.executed = true;
            uint256 until = block.timestamp + unbondingDelay;
            t.fraudCooldownUntil = uint40(until);
            (uint256 slashed,) = _slash(target, 0, address(0), false);
            emit FraudCaseExecuted(caseId, target, slashed, until);
        }
    }

    // ---------------------------------------------------------------- views

    /// @notice Live = advertisement not expired, bonded stake at least the minimum, not jailed.
    function isLive(address operator) public view returns (bool) {
        Operator storage op = _operators[operator];
        return op.registered && !op.jailed && op.stake >= minBond && block.timestamp < op.adExpiry;
    }

    function operatorInfo(address operator) external view returns (Operator memory) {
        return _operators[operator];
    }

    /// @notice Operators holding bonded or unbonding stake (at most MAX_OPERATORS).
    function operatorCount() external view returns (uint256) {
        return _operatorList.length;
    }

    /// @notice Page through registered operators; out-of-range pages come back short or empty.
    /// The order changes when an operator leaves (swap-and-pop): read pages at one block.
    function operatorsPage(uint256 start, uint256 count) external view returns (address[] memory page) {
        uint256 n = _operatorList.length;
        if (start >= n) return new address[](0);
        uint256 end = count > n - start ? n : start + count;
        page = new address[](end - start);
        for (uint256 i = start; i < end; ++i) {
            page[i - start] = _operatorList[i];
        }
    }

    function liveStake() external view returns (uint256 total) {
        uint256 n = _operatorList.length;
        for (uint256 i = 0; i < n; ++i) {
            address a = _operatorList[i];
            if (isLive(a)) total += _operators[a].stake;
        }
    }

    function isEquivocationSlashed(address operator, bytes32 peerKey, uint64 seq)
        external
        view
        returns (bool)
    {
        return _equivocationSlashed[operator][peerKey][seq];
    }

    /// @notice True once `operator` has posted an advertisement naming `peerKey` (ever).
    function hasAdvertisedKey(address operator, bytes32 peerKey) external view returns (bool) {
        return _advertisedKey[operator][peerKey];
    }

    function fraudCaseId(address target, bytes32 evidenceHash) public pure returns (bytes32) {
        return keccak256(abi.encode(target, evidenceHash));
    }

    function fraudCase(bytes32 caseId) external view returns (FraudCase memory) {
        return _cases[caseId];
    }

    function hasReported(bytes32 caseId, address reporter) external view returns (bool) {
        return _reported[caseId][reporter];
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function hashAdvertisement(
        address operator,
        bytes32 peerKey,
        bytes32 multiaddrsHash,
        bytes32 keyProofHash,
        uint64 expiry,
        uint64 nonce
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ADVERTISEMENT_TYPEHASH, operator, peerKey, multiaddrsHash, keyProofHash, expiry, nonce
                )
            )
        );
    }

    /// @notice What `commitEquivocation` takes: binds the two headers and the beneficiary.
    function equivocationCommitment(
        BatchHeader calldata a,
        BatchHeader calldata b,
        address beneficiary
    ) external view returns (bytes32) {
        return keccak256(abi.encode(hashBatchHeader(a), hashBatchHeader(b), beneficiary));
    }

    function hashBatchHeader(BatchHeader calldata h) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(BATCH_HEADER_TYPEHASH, h.peerKey, h.seq, h.cidDigest, h.timestampMs))
        );
    }

    // ------------------------------------------------------------ internals

    function _checkMultiaddrs(string[] calldata multiaddrs) private pure {
        uint256 n = multiaddrs.length;
        if (n == 0 || n > MAX_MULTIADDRS) revert BadMultiaddrCount(n, MAX_MULTIADDRS);
        for (uint256 i = 0; i < n; ++i) {
            uint256 len = bytes(multiaddrs[i]).length;
            if (len == 0 || len > MAX_MULTIADDR_BYTES) {
                revert BadMultiaddrLength(i, len, MAX_MULTIADDR_BYTES);
            }
        }
    }

    function _recover(bytes32 digest, bytes calldata signature)
        private
        pure
        returns (address recovered, bool ok)
    {
        ECDSA.RecoverError err;
        (recovered, err,) = ECDSA.tryRecoverCalldata(digest, signature);
        ok = err == ECDSA.RecoverError.NoError;
    }

    /// @dev Advertisements: the operator key or its current signer.
    function _requireAdSigner(bytes32 digest, bytes calldata signature, address operator) private view {
        (address recovered, bool ok) = _recover(digest, signature);
        if (!ok || (recovered != operator && recovered != signerOf[operator])) {
            revert InvalidSignature(operator, recovered);
        }
    }

    /// @dev Batch headers: the operator key or any signer it ever authorised.
    function _requireHeaderSigner(bytes32 digest, bytes calldata signature, address operator)
        private
        view
    {
        (address recovered, bool ok) = _recover(digest, signature);
        if (!ok || (recovered != operator && signerOperator[recovered] != operator)) {
            revert InvalidSignature(operator, recovered);
        }
    }

    /// @dev Snapshots every operator's bonded stake (bounded by MAX_OPERATORS; operators
    /// with none, the jailed included, are left out) into an event and stores only its hash;
    /// returns the opener's weight.
    function _openCase(FraudCase storage c, bytes32 caseId, address target, bytes32 evidenceHash)
        private
        returns (uint256)
    {
        uint256 n = _operatorList.length;
        address[] memory ops = new address[](n);
        uint256[] memory weights = new uint256[](n);
        uint256 bonded;
        uint256 total;
        for (uint256 i = 0; i < n; ++i) {
            address a = _operatorList[i];
            uint256 s = _operators[a].stake;
            if (s != 0) {
                ops[bonded] = a;
                weights[bonded] = s;
                total += s;
                ++bonded;
            }
        }
        assembly ("memory-safe") {
            mstore(ops, bonded)
            mstore(weights, bonded)
        }
        c.target = target;
        c.openedAt = uint40(block.timestamp);
        c.openedBlock = uint40(block.number);
        c.snapshotBondedStake = uint112(total); // 256 x uint96 < 2^112
        c.evidenceHash = evidenceHash;
        c.snapshotHash = keccak256(abi.encode(ops, weights));
        emit FraudCaseOpened(caseId, target, evidenceHash, total, ops, weights);
        return _operators[msg.sender].stake;
    }

    /// @dev The caller's weight in the snapshot the reporter passed back, checked by hash.
    function _snapshotWeight(
        bytes32 snapshotHash,
        bytes32 caseId,
        address[] calldata ops,
        uint256[] calldata weights
    ) private view returns (uint256) {
        if (keccak256(abi.encode(ops, weights)) != snapshotHash) revert SnapshotMismatch(caseId);
        uint256 n = ops.length;
        for (uint256 i = 0; i < n; ++i) {
            if (ops[i] == msg.sender) return weights[i];
        }
        revert NotInSnapshot(caseId, msg.sender);
    }

    /// @dev Takes `slashBps` of everything still in the contract for the operator (bonded
    /// first, then unbonding), pays `rewardBps` of it to `rewardee` and keeps the rest in the
    /// pot. With `jail` (equivocation) the operator is jailed, its advertisement cleared and
    /// what stays bonded forced into unbonding with a fresh delay (still slashable). Without
    /// (fraud) only a bonded remainder below minBond is forced out, so no dust stays bonded.
    /// An operator left holding nothing is removed from the list.
    function _slash(address operator, uint256 rewardBps, address rewardee, bool jail)
        private
        returns (uint256 slashed, uint256 reward)
    {
        Operator storage op = _operators[operator];
        uint256 stake = op.stake;
        uint256 unbonding = op.unbonding;
        slashed = ((stake + unbonding) * slashBps) / BPS;
        if (slashed <= stake) {
            stake -= slashed;
        } else {
            unbonding -= slashed - stake;
            stake = 0;
        }
        reward = (slashed * rewardBps) / BPS;
        slashedPot += slashed - reward;

        if (stake != 0 && (jail || stake < minBond)) {
            uint256 moved = stake;
            unbonding += moved;
            stake = 0;
            uint256 readyAt = block.timestamp + unbondingDelay;
            if (readyAt > op.unbondReadyAt) op.unbondReadyAt = uint40(readyAt);
            emit UnbondForced(operator, moved, unbonding, op.unbondReadyAt);
        }
        op.stake = uint96(stake); // never more than before
        op.unbonding = SafeCast.toUint96(unbonding);
        if (jail) {
            op.adExpiry = 0;
            if (!op.jailed) {
                op.jailed = true;
                emit Jailed(operator);
            }
        }
        emit Slashed(operator, slashed, reward, rewardee);
        if (stake == 0 && unbonding == 0) _removeOperator(operator);
    }

    /// @dev Swap-and-pop; keeps the advertisement nonce (no replay), clears the advertisement
    /// so a re-registration starts not live (`Deregistered` says so).
    function _removeOperator(address operator) private {
        Operator storage op = _operators[operator];
        if (!op.registered) return;
        uint256 index = op.listIndex;
        uint256 last = _operatorList.length - 1;
        if (index != last) {
            address moved = _operatorList[last];
            _operatorList[index] = moved;
            _operators[moved].listIndex = uint16(index);
        }
        _operatorList.pop();
        op.registered = false;
        op.listIndex = 0;
        op.adExpiry = 0;
        emit Deregistered(operator);
    }
}
